"""The configurations a sweep trains, from `search.space` (README, "Search space").

Each group (tissue, cluster, replicate) trains every setting of the searched
training keys at every λ of `search.lambdas`, so each setting has its λ = 0
baseline. Without a searcher the settings are fixed before the sweep and
shared by every group: the grid keys crossed, and for each grid point
`num_samples` distinct draws of the sampled keys (seeded by `search.seed`;
floats kept to 3 significant digits, so a trial's name is its configuration;
a draw the grid point already has is drawn again). With
`searcher: optuna` each group's settings are proposed as its trials end
(`optuna_search`).
"""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np

from ..config import INTEGER_KEYS, TRAINING_KEYS, SearchConfig
from ..core.trial import Trial

SAMPLING = 0x5EA  # the settings' own stream of search.seed
DRAWS = 100  # tries for a setting the grid point does not have yet


def draw(key: str, domain: dict, rng: np.random.Generator):
    """One value of a sampled key's domain."""
    (kind, values), = domain.items()
    if kind == "choice":
        return values[int(rng.integers(len(values)))]
    low, high = values
    if key in INTEGER_KEYS:  # bounds included
        if kind == "uniform":
            return int(rng.integers(low, high + 1))
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
    value = rng.uniform(low, high) if kind == "uniform" else math.exp(rng.uniform(math.log(low), math.log(high)))
    return significant(value)


def significant(value: float) -> float:
    return float(f"{value:.3g}")


def ordered(setting: dict) -> dict:
    return {key: setting[key] for key in TRAINING_KEYS if key in setting}


def settings(search: SearchConfig) -> list[dict]:
    """The settings every group trains (see the module's docstring); one empty
    setting when nothing but λ is searched."""
    grid_keys = [key for key, domain in search.space.items() if "grid" in domain]
    rng = np.random.default_rng([search.seed, SAMPLING])
    found: list[dict] = []
    for _ in range(search.num_samples):
        for point in itertools.product(*(search.space[key]["grid"] for key in grid_keys)):
            for _ in range(DRAWS):
                setting = ordered({**dict(zip(grid_keys, point)),
                                   **{key: draw(key, domain, rng) for key, domain in search.space.items()
                                      if key not in grid_keys}})
                if setting not in found:
                    found.append(setting)
                    break
    return found


def group_order(search: SearchConfig, group: tuple[str, int, int], trials: list[Trial]) -> list[Trial]:
    """A group's trials in a seeded random order, whatever order the config lists them
    in: trials start in this order, and under early stopping the first to reach a rung
    are never stopped there. The group's own seed, whatever else runs with it."""
    tissue, cluster, replicate = group
    rng = np.random.default_rng([search.seed, zlib.crc32(tissue.encode()), cluster, replicate])
    return [trials[i] for i in rng.permutation(len(trials))]


def trials_per_group(search: SearchConfig) -> int:
    samples = search.num_samples if search.searcher else len(settings(search))
    return samples * len(search.lambdas)
