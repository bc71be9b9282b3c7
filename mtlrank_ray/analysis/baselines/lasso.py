"""The per-gene lasso baseline.

For one (cluster, replicate), each gene gets a lasso on the standardized splits
(`prepare_splits`). sklearn's objective on the training cells,
1/(2n)·‖y − Xw − b‖² + alpha·‖w‖₁, is solved along the grid
`search.lasso_alphas` (strongest first, warm-started); the alpha with the best
validation R² is kept and its test R² reported, as λ is chosen for the networks.

Coordinate descent runs on the T x T Gram matrix, so one pass costs T² instead
of cells x T; building that matrix (cells x T²) is most of the cost.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path

from ...core.cluster_data import ClusterData, GeneSplit, gene_features, r2_scores
from . import BaselineFit

log = logging.getLogger(__name__)


def fit_lasso(data: ClusterData, splits: dict[str, GeneSplit], alphas: list[float]) -> BaselineFit:
    grid = np.sort(np.asarray(alphas, np.float64))[::-1]
    fits, unconverged = [], 0
    for g in range(len(data.genes)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fits.append(_fit_gene(data.expression, splits, g, grid))
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        log.warning("lasso baseline, the cluster of gene %s: %d of %d genes' paths hit the "
                    "iteration limit at small alphas; their R² is the last iterate's",
                    data.genes[0], unconverged, len(data.genes))
    alpha, coef, intercept, val_r2, test_r2 = (np.array(v) for v in zip(*fits))
    coef = coef.astype(np.float32)
    return BaselineFit("lasso", data.genes, setting=alpha, importance=np.abs(coef), val_r2=val_r2,
                       test_r2=test_r2, parameters={"coef": coef, "intercept": intercept})


def _fit_gene(expression: np.ndarray, splits: dict[str, GeneSplit], g: int, grid: np.ndarray):
    x = gene_features(expression, splits["train"], g)
    y = splits["train"].target[g]
    x_mean, y_mean = x.mean(axis=0), y.mean()
    x -= x_mean
    y = y - y_mean
    # float32 throughout: the path matches float64's to ~1e-6 at a tenth of the cost;
    # the inputs are consistent by construction, so sklearn's copies and checks are skipped.
    _, coefs, _ = lasso_path(x, y, alphas=grid, precompute=x.T @ x, Xy=x.T @ y, check_input=False)
    intercepts = y_mean - x_mean @ coefs
    r2 = {}
    for name in ("val", "test"):
        target = splits[name].target[g][:, None].astype(np.float64)
        predicted = gene_features(expression, splits[name], g) @ coefs + intercepts
        ss_tot = np.sum((target - target.mean()) ** 2)
        r2[name] = r2_scores(np.sum((target - predicted) ** 2, axis=0), np.full(len(grid), ss_tot))
    best = int(np.argmax(r2["val"]))  # ties: the sparser model (grid is strongest first)
    return grid[best], coefs[:, best], intercepts[best], r2["val"][best], r2["test"][best]
