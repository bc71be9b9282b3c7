"""Attributions are complete; rankings and the consensus network."""

import numpy as np
import pandas as pd
import tensorflow as tf
from conftest import SMALL_SETTINGS

from mtlrank_ray.analysis.evaluation import _abs_pearson
from mtlrank_ray.analysis.rankings import _ranking_rows, consensus_network
from mtlrank_ray.config import TrainingConfig, config_from_dict
from mtlrank_ray.core import model
from mtlrank_ray.core.attribution import contributions
from mtlrank_ray.core.cluster_data import ClusterData, split_cells
from mtlrank_ray.core.trainer import ClusterTrainer, Trial
from mtlrank_ray.data import load_tissue, prepare_store


def test_contributions_sum_to_prediction_minus_background(small_atlas_template, tmp_path):
    prepare_store(small_atlas_template, config_from_dict(SMALL_SETTINGS), tmp_path, tissues="Liver")
    tissue = load_tissue(tmp_path, "Liver")
    data = ClusterData.from_tissue(tissue, 0)
    trainer = ClusterTrainer(data, Trial("Liver", 0, 0, 0.01), TrainingConfig(batch_size=32),
                             split_cells(len(tissue.barcodes), 0.1, 0.1, 0, 0), seed=0)
    trainer.fit(3)
    s = trainer.splits["train"].standardization
    a, c = model.first_layer_coefficients(trainer.weights, *trainer.activity, s.shift, s.scale, s.constant)
    cells = np.stack([trainer.splits["train"].cells[g][:40] for g in range(len(data.genes))])
    contribution, delta = contributions(trainer.weights, trainer.expression, cells, a, c)
    # Prediction at the data and, independently, at the zero background (first layer = relu(bias)).
    prediction = model.predict(trainer.weights, trainer.expression, cells, a, c).numpy()
    hidden = tf.nn.relu(trainer.weights["first_bias"])[:, None, :]
    for name in model.DENSE:
        hidden = tf.matmul(hidden, trainer.weights[f"{name}_kernel"]) + trainer.weights[f"{name}_bias"][:, None, :]
        hidden = hidden if name == "output" else tf.nn.relu(hidden)
    np.testing.assert_allclose(delta.numpy(), prediction - hidden.numpy()[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf.reduce_sum(contribution, axis=2).numpy(), delta.numpy(),
                               rtol=1e-4, atol=1e-4)
    assert np.abs(contribution.numpy()).sum() > 0
    assert np.abs(delta.numpy()).max() > 0.1  # a real test: the network moved away from the background


def test_consensus_network_keeps_tfs_in_the_top_k_of_every_replicate():
    rows = []
    for replicate, order in ((0, ["a", "b", "c", "d"]), (1, ["b", "a", "d", "c"])):
        rows += [("Liver", "g1", replicate, tf, 10 - r, r + 1) for r, tf in enumerate(order)]
    rankings = pd.DataFrame(rows, columns=["tissue", "gene", "replicate", "tf", "score", "rank"])
    network = consensus_network(rankings, top=2)
    assert network.tf.tolist() == ["a", "b"] and network.mean_rank.tolist() == [1.5, 1.5]
    assert consensus_network(rankings, top=3).tf.tolist() == ["a", "b"]  # c and d are not in both


def test_rank_rows_and_pearson_equal_their_references():
    scores = np.array([[0.5, 2.0, 0.5, 1.0], [3.0, 0.0, 1.0, 2.0]])
    rows = _ranking_rows("Liver", 0, ["g1", "g2"], 1, np.array(list("abcd")), scores)
    assert rows.tf.tolist() == list("abcdabcd") and rows.gene.tolist() == ["g1"] * 4 + ["g2"] * 4
    assert rows["rank"].tolist() == [3, 1, 4, 2, 1, 4, 3, 2]  # ties: the earlier TF ranks higher
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=200)
    x[:, 2] = 1.0  # a constant TF: correlation 0, not NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nan_to_num(np.abs(np.corrcoef(x.T, y)[-1, :-1]))
    np.testing.assert_allclose(_abs_pearson(x, y), expected, atol=1e-12)
