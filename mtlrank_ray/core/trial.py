"""What names a trial and reads its model file; no TensorFlow, so the driver and the
baselines' workers never load it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..config import INTEGER_KEYS, TRAINING_KEYS

SHORT = {"epochs": "ep", "batch_size": "bs", "learning_rate": "lr", "standardize": "std", "l1": "l1"}


@dataclass(frozen=True, order=True)
class Trial:
    """One network of the sweep: its group, λ, and the training settings searched
    (`search.space`), as (key, value) pairs in TRAINING_KEYS order."""

    tissue: str
    cluster: int
    replicate: int
    lam: float
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, trial: Mapping) -> Trial:
        """From a trial's Tune config (`config["trial"]`) or a results row: the searched
        settings are the training keys it holds (a row's empty ones are not)."""
        settings = tuple((key, _plain(key, trial[key])) for key in TRAINING_KEYS
                         if key in trial and trial[key] is not None and trial[key] == trial[key])
        return cls(str(trial["tissue"]), int(trial["cluster"]), int(trial["replicate"]),
                   float(trial["lambda"]), settings)

    def at(self, lam: float) -> Trial:
        """The same group and settings at another λ (λ = 0: this setting's baseline)."""
        return Trial(self.tissue, self.cluster, self.replicate, float(lam), self.settings)

    @property
    def config(self) -> dict:
        """The trial's Tune config, `config["trial"]`."""
        return {"tissue": self.tissue, "cluster": self.cluster, "replicate": self.replicate,
                "lambda": self.lam, **dict(self.settings)}

    @property
    def name(self) -> str:
        return (f"{self.tissue}_c{self.cluster}_r{self.replicate}_lambda{self.lam:g}"
                + "".join(f"_{SHORT[key]}{_text(value)}" for key, value in self.settings))

    def describe(self) -> str:
        return (f"tissue {self.tissue}, cluster {self.cluster}, replicate {self.replicate}, "
                f"λ={self.lam:g}" + "".join(f", {key}={_text(value)}" for key, value in self.settings))


def _plain(key: str, value):
    """A table's value (a numpy scalar, an integer column read as float) as the Python
    value a Tune config holds."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if key in INTEGER_KEYS else value


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def load_model(payload: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    """(genes, weights) of a model file written from `ClusterTrainer.best_model`."""
    with np.load(io.BytesIO(payload)) as saved:
        return saved["genes"].tolist(), {k: saved[k] for k in saved.files if k != "genes"}
