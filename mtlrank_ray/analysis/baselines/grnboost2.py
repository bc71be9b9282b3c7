"""GRNBoost2 (arboreto; Moerman et al., Bioinformatics 2019), per gene.

Gradient-boosted regression trees with arboreto's GRNBoost2 settings: learning
rate 0.01, up to 5,000 trees of depth 3, a tenth of the TFs tried at each split,
90% of the training cells drawn for each tree, fitted to the gene's
standardized velocity from the standardized TF expression of its training
cells. arboreto stops adding trees when the mean out-of-bag improvement of the
last 25 is negative; here the split has validation cells, so boosting stops
once 25 trees in a row bring no better validation error and keeps the best
number of trees (chosen on validation, as the lasso's alpha and the networks'
λ are). A TF's importance is its total split gain up to that tree, the
quantity arboreto ranks TFs by (sklearn's feature_importances_, unnormalized).
arboreto's out-of-bag rule, at learning rate 0.01, often stops within a few
dozen trees: on the nonlinear case of tests/test_baselines.py it stops at 24
trees with test R² 0.04, where validation keeps 875 with 0.66.

A gene that is itself a TF keeps its own expression among the features, as in
the networks and the lasso (arboreto drops it): every method sees the same
inputs, so their differences are the models'.

LightGBM grows the trees, not sklearn's GradientBoostingRegressor that arboreto
wraps: its histogram splits made one tree ~11x faster at 16,000 cells x 1,600
TFs (51 against 569 ms on a 2-core machine), with the same per-split TF sampling
(feature_fraction_bynode), per-tree bagging and early stopping on a given
validation set, and results fixed by a seed. Its trees are not sklearn's
(histogram splits, another split search): on that same case sklearn's reach
test R² 0.49 at 875 trees and 0.61 at 5,000, ranking the same TFs first.
arboreto itself needs Dask and is no longer maintained.
"""

from __future__ import annotations

import zlib

import lightgbm as lgb
import numpy as np

from ...core.cluster_data import ClusterData, GeneSplit, gene_features, r2_scores
from . import BaselineFit

MAX_TREES = 5000
EARLY_STOPPING_WINDOW = 25
PARAMETERS = {  # arboreto's GRNBoost2 (SGBM_KWARGS and sklearn's defaults) in LightGBM's terms
    "objective": "regression", "learning_rate": 0.01, "max_depth": 3, "num_leaves": 8,
    "feature_fraction_bynode": 0.1, "bagging_fraction": 0.9, "bagging_freq": 1,
    "min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 0.0, "lambda_l2": 0.0,
    "feature_pre_filter": False, "deterministic": True, "force_col_wise": True, "verbose": -1,
}


def fit_grnboost2(data: ClusterData, splits: dict[str, GeneSplit], seed: tuple[int, ...],
                  threads: int = 1) -> BaselineFit:
    fits = [fit_gene(data.expression, splits, g, gene_seed(seed, gene), threads)
            for g, gene in enumerate(data.genes)]
    trees, importance, val_r2, test_r2 = (np.array(v) for v in zip(*fits))
    return BaselineFit("grnboost2", data.genes, setting=trees, importance=importance.astype(np.float32),
                       val_r2=val_r2, test_r2=test_r2)


def gene_seed(seed: tuple[int, ...], gene: str) -> int:
    """LightGBM's seed for a gene in a replicate: every gene its own stream."""
    return int(np.random.SeedSequence([*seed, zlib.crc32(gene.encode())]).generate_state(1)[0] >> 1)


def fit_gene(expression: np.ndarray, splits: dict[str, GeneSplit], g: int, seed: int, threads: int):
    """(trees kept, gain per TF, validation R², test R²) of gene g."""
    parameters = {**PARAMETERS, "seed": seed, "num_threads": max(1, int(threads))}
    features = {name: gene_features(expression, splits[name], g) for name in ("train", "val", "test")}
    train = lgb.Dataset(features["train"], splits["train"].target[g], params=parameters)
    val = lgb.Dataset(features["val"], splits["val"].target[g], params=parameters, reference=train)
    booster = lgb.train(parameters, train, num_boost_round=MAX_TREES, valid_sets=[val],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING_WINDOW, verbose=False)])
    trees = booster.best_iteration
    r2 = {}
    for name in ("val", "test"):
        target = splits[name].target[g].astype(np.float64)
        predicted = booster.predict(features[name], num_iteration=trees)
        r2[name] = r2_scores(np.sum((target - predicted) ** 2), np.sum((target - target.mean()) ** 2))
    gain = booster.feature_importance("gain", iteration=trees)
    return trees, gain, float(r2["val"]), float(r2["test"])
