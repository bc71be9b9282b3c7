"""The per-gene baselines the networks are compared with, fitted on the same
standardized inputs and the same train / validation / test cells:

- `lasso`: sklearn's lasso, alpha chosen on validation (`lasso.py`);
- `grnboost2`: the field's tree-based network inference, arboreto's GRNBoost2
  settings, the number of trees chosen on validation (`grnboost2.py`).

Each fit of one (tissue, cluster, replicate) is a `BaselineFit`: per gene the
validation and test R², the setting validation chose, and an importance per TF
that ranks the TFs as the networks' DeepLIFT scores do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...config import SearchConfig
from ...core.cluster_data import ClusterData, prepare_splits
from ...errors import InputError

BASELINES = ("lasso", "grnboost2")  # the order they are queued and shown in
LABEL = {"lasso": "lasso", "grnboost2": "GRNBoost2"}  # as plots and tables name them
SETTING = {"lasso": "alpha", "grnboost2": "trees"}  # what validation chooses, as gene_r2 names it
RANKING = {"lasso": "abs lasso coefficient", "grnboost2": "GRNBoost2 importance"}  # evaluation's
LINE = {"lasso": "--", "grnboost2": ":"}  # the validation plot's line for each


@dataclass
class BaselineFit:
    """One method's per-gene models of one cluster and replicate."""

    method: str  # one of BASELINES
    genes: list[str]
    setting: np.ndarray  # (G,) chosen on validation: the lasso's alpha, GRNBoost2's number of trees
    importance: np.ndarray  # (G, T) >= 0: |coefficient| (lasso), total split gain (GRNBoost2)
    val_r2: np.ndarray  # (G,)
    test_r2: np.ndarray  # (G,)
    parameters: dict[str, np.ndarray] = field(default_factory=dict)  # the lasso's coef, intercept

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, method=self.method, genes=np.array(self.genes), setting=self.setting,
                 importance=self.importance, val_r2=self.val_r2, test_r2=self.test_r2,
                 **{f"parameter_{k}": v for k, v in self.parameters.items()})
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> "BaselineFit":
        return cls.from_bytes(Path(path).read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, payload: bytes, where: str) -> "BaselineFit":
        """A fit from the bytes of its file, which `where` names in errors."""
        with np.load(io.BytesIO(payload)) as saved:
            if "method" not in saved.files:
                if {"alpha", "coef"} <= set(saved.files):  # a lasso fit from before GRNBoost2
                    return cls(method="lasso", genes=saved["genes"].tolist(), setting=saved["alpha"],
                               importance=np.abs(saved["coef"]), val_r2=saved["val_r2"],
                               test_r2=saved["test_r2"],
                               parameters={"coef": saved["coef"], "intercept": saved["intercept"]})
                raise InputError(f"{where} is not a baseline fit this version reads; rerun the "
                                 "sweep with --fresh")
            return cls(method=str(saved["method"]), genes=saved["genes"].tolist(),
                       setting=saved["setting"], importance=saved["importance"],
                       val_r2=saved["val_r2"], test_r2=saved["test_r2"],
                       parameters={k.removeprefix("parameter_"): saved[k] for k in saved.files
                                   if k.startswith("parameter_")})


def baseline_name(tissue: str, cluster: int, replicate: int, method: str) -> str:
    """A baseline's file name stem beside the networks' (`Trial.name`)."""
    return f"{tissue}_c{cluster}_r{replicate}_{method}"


def fit_baseline(method: str, data: ClusterData, split: dict[str, np.ndarray], standardize: str,
                 search: SearchConfig, replicate: int, threads: int = 1) -> BaselineFit:
    """Fit `method` for every gene of one cluster on one replicate's split."""
    splits = prepare_splits(data, split, standardize)
    if method == "lasso":
        from .lasso import fit_lasso
        return fit_lasso(data, splits, search.lasso_alphas)
    if method == "grnboost2":
        from .grnboost2 import fit_grnboost2
        return fit_grnboost2(data, splits, seed=(search.seed, replicate), threads=threads)
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
