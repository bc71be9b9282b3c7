"""The maths and the training loop, knowing nothing of Ray: the batched network and
its loss (`model`), one cluster's splits and batches (`cluster_data`), the trainer
(`trainer`), what names a trial and reads its model (`trial`) and the DeepLIFT
attribution that ranks TFs (`attribution`)."""
