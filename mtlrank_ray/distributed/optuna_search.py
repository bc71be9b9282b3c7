"""`search.searcher: optuna`: each group's settings proposed by its own Optuna study.

Per (tissue, cluster, replicate) a TPE study, seeded by `search.seed` and the
group, proposes `search.num_samples` settings of the sampled keys; each
setting is trained at every λ of `search.lambdas` (so it has its λ = 0
baseline), and the study is told the setting's best mean validation R² over
λ once all of them have ended. Groups take turns, so trials of many groups
run at once while each group's later settings learn from its earlier ones.
Sampled floats are kept to 3 significant digits, as without a searcher; a
setting the group already has is told to its study as failed and another is
asked for (up to ASKS times), so no configuration is trained twice. Proposals
depend on the seed and on the order in which trials end.
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections import deque

import numpy as np
import optuna
from ray.tune.search import Searcher

from ..config import INTEGER_KEYS, SearchConfig
from ..core.trial import Trial
from .search_space import group_order, ordered, significant, trials_per_group

ASKS = 100  # proposals tried for a setting the group does not have yet


def distribution(key: str, domain: dict) -> optuna.distributions.BaseDistribution:
    (kind, values), = domain.items()
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(values)
    kind_of = optuna.distributions.IntDistribution if key in INTEGER_KEYS else optuna.distributions.FloatDistribution
    return kind_of(values[0], values[1], log=kind == "loguniform")


class GroupedOptuna(Searcher):
    def __init__(self, groups: list[tuple[str, int, int]], search: SearchConfig, metric: str):
        super().__init__(metric=metric, mode="max")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.search = search
        self.distributions = {key: distribution(key, domain) for key, domain in search.space.items()}
        self.studies = {group: optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=int(np.random.SeedSequence([search.seed, zlib.crc32(group[0].encode()), *group[1:]])
                     .generate_state(1)[0]))) for group in groups}
        self.asked = {group: 0 for group in groups}
        self.proposed: dict[tuple, list[dict]] = {group: [] for group in groups}
        self.waiting: deque[tuple[tuple, dict]] = deque()  # (setting key, trial config) to hand out
        self.open: dict[tuple, list] = {}  # (group, k) -> [optuna trial, λ left, best]
        self.setting_of: dict[str, tuple] = {}  # Tune trial id -> (group, k)

    @property
    def total_trials(self) -> int:
        return len(self.asked) * trials_per_group(self.search)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the config's; metric and mode are set here

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.waiting:
            todo = [g for g, n in self.asked.items() if n < self.search.num_samples]
            if not todo:
                return Searcher.FINISHED
            group = min(todo, key=self.asked.get)
            proposal, setting = self._propose(group)
            key = (group, self.asked[group])
            self.asked[group] += 1
            if proposal is None:  # the space holds no setting this group lacks
                self.asked[group] = self.search.num_samples
                return self.suggest(trial_id)
            self.open[key] = [proposal, len(self.search.lambdas), -math.inf]
            trials = [Trial(*group, float(lam), tuple(setting.items())) for lam in sorted(self.search.lambdas)]
            self.waiting.extend((key, trial.config) for trial in group_order(self.search, group, trials))
        key, config = self.waiting.popleft()
        self.setting_of[trial_id] = key
        return {"trial": config}

    def _propose(self, group: tuple) -> tuple:
        """(Optuna trial, setting) new to the group, or (None, None)."""
        study = self.studies[group]
        for _ in range(ASKS):
            proposal = study.ask(self.distributions)
            setting = ordered({key: significant(value) if isinstance(self.distributions[key],
                                                                      optuna.distributions.FloatDistribution)
                               else value for key, value in proposal.params.items()})
            if setting not in self.proposed[group]:
                self.proposed[group].append(setting)
                return proposal, setting
            study.tell(proposal, state=optuna.trial.TrialState.FAIL)
        return None, None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error:  # a resumed sweep may run it again under the same id
            return
        key = self.setting_of.pop(trial_id, None)
        if key is None:
            return
        entry = self.open[key]
        value = (result or {}).get("best_mean_val_r2")
        if value is not None and math.isfinite(value):
            entry[2] = max(entry[2], float(value))
        entry[1] -= 1
        if entry[1] == 0:
            study, finite = self.studies[key[0]], math.isfinite(entry[2])
            study.tell(entry[0], entry[2] if finite else None,
                       state=None if finite else optuna.trial.TrialState.FAIL)
            del self.open[key]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
