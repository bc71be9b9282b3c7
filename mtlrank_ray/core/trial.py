"""What names a trial and reads its model file; no TensorFlow, so the driver and the
baselines' workers never load it."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trial:
    tissue: str
    cluster: int
    replicate: int
    lam: float

    @property
    def name(self) -> str:
        return f"{self.tissue}_c{self.cluster}_r{self.replicate}_lam{self.lam:g}"

    def describe(self) -> str:
        return (f"tissue {self.tissue}, cluster {self.cluster}, replicate {self.replicate}, "
                f"λ={self.lam:g}")


def load_model(payload: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    """(genes, weights) of a model file written from `ClusterTrainer.best_model`."""
    with np.load(io.BytesIO(payload)) as saved:
        return saved["genes"].tolist(), {k: saved[k] for k in saved.files if k != "genes"}
