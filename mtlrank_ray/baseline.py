"""The per-gene lasso baseline the networks are compared with.

For one (cluster, replicate), each gene gets a lasso on the same inputs and
cells as the networks: the TF expression standardized as the trainer does it
(`training.standardize`), the same standardized velocity, the same train /
validation / test cells. sklearn's objective on the training cells,
1/(2n)·‖y − Xw − b‖² + alpha·‖w‖₁, is solved along the grid
`search.lasso_alphas` (strongest first, warm-started); the alpha with the best
validation R² is kept and its test R² reported, as λ is chosen for the networks.

Coordinate descent runs on the T x T Gram matrix, so one pass costs T² instead
of cells x T; building that matrix (cells x T²) is most of the cost.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path

from .cluster_data import ClusterData, GeneSplit, prepare_splits, r2_scores

log = logging.getLogger(__name__)


@dataclass
class LassoFit:
    """One cluster's lasso models for one replicate, at the alphas chosen on validation."""

    genes: list[str]
    alpha: np.ndarray  # (G,)
    coef: np.ndarray  # (G, T), on standardized expression
    intercept: np.ndarray  # (G,)
    val_r2: np.ndarray  # (G,)
    test_r2: np.ndarray  # (G,)

    def save(self, path: Path) -> None:
        np.savez(path, genes=np.array(self.genes), alpha=self.alpha, coef=self.coef,
                 intercept=self.intercept, val_r2=self.val_r2, test_r2=self.test_r2)

    @classmethod
    def load(cls, path: Path) -> "LassoFit":
        with np.load(path) as saved:
            return cls(genes=saved["genes"].tolist(), alpha=saved["alpha"], coef=saved["coef"],
                       intercept=saved["intercept"], val_r2=saved["val_r2"],
                       test_r2=saved["test_r2"])


def lasso_name(tissue: str, cluster: int, replicate: int) -> str:
    """The baseline's file name stem beside the networks' (`Trial.name`)."""
    return f"{tissue}_c{cluster}_r{replicate}_lasso"


def fit_lasso(data: ClusterData, split: dict[str, np.ndarray], standardize: str,
              alphas: list[float]) -> LassoFit:
    splits = prepare_splits(data, split, standardize)
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
    return LassoFit(data.genes, alpha, coef.astype(np.float32), intercept, val_r2, test_r2)


def _features(expression: np.ndarray, split: GeneSplit, g: int) -> np.ndarray:
    s = split.standardization
    features = expression[split.cells[g]]  # a copy: safe to modify in place
    features -= s.shift[g]
    features /= s.scale[g]
    return features


def _fit_gene(expression: np.ndarray, splits: dict[str, GeneSplit], g: int, grid: np.ndarray):
    x = _features(expression, splits["train"], g)
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
        predicted = _features(expression, splits[name], g) @ coefs + intercepts
        ss_tot = np.sum((target - target.mean()) ** 2)
        r2[name] = r2_scores(np.sum((target - predicted) ** 2, axis=0), np.full(len(grid), ss_tot))
    best = int(np.argmax(r2["val"]))  # ties: the sparser model (grid is strongest first)
    return grid[best], coefs[:, best], intercepts[best], r2["val"][best], r2["test"][best]
