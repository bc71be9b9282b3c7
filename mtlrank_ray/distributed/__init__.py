"""The Ray layer, knowing nothing of the model's insides: tissues in the object store
(`ray_data`), the Tune sweep and its trials (`sweep`), grouped ASHA
(`asha`), baselines and rankings beside the trials (`group_tasks`), atomic storage
writes (`atomic_fs`) and a local multi-node cluster for trying the cluster path
(`local_cluster`)."""
