"""Asynchronous successive halving within groups of competing trials.

Ray's ASHA compares every trial with every other. In this sweep only the λ
values of one (tissue, cluster, replicate) compete: a hard cluster's best λ
must not be stopped because an easy cluster scores higher. This scheduler
keeps ASHA's rungs (grace_period · reduction_factor^k epochs, below max_t)
and its rule (at a rung, stop a trial whose metric is below the
(1 - 1/reduction_factor) quantile of those recorded before it at that rung),
but records and compares per group. A missing or non-finite metric never
counts as good: such a trial is stopped at its rung and not recorded. A trial
that reports a rung again (restarted from an earlier checkpoint) gets the
decision it got there the first time. Trials for which `never_stop(config)`
holds (the sweep's λ = 0 baseline) are recorded like any other but always run
to the end, so the baseline the chosen λ is compared with is never cut short.

Tune saves a scheduler nowhere: a resumed sweep takes it from tuner.pkl, as it
was when the sweep was created. Its rung records travel instead in a Tune
callback (`GroupedASHA.records_keeper()`), whose state Tune saves with every
experiment snapshot and gives back on resume; the callback and the scheduler
are pickled together in tuner.pkl, so the restored callback still holds the
restored scheduler.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Hashable

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """ASHA's rungs: grace_period · reduction_factor^k epochs, below max_t; with the
    last epoch, the only epochs at which a trial can be stopped."""
    milestones, milestone = [], grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


class GroupedASHA(FIFOScheduler):
    def __init__(self, group_of: Callable[[dict], Hashable], metric: str, max_t: int,
                 grace_period: int, reduction_factor: int, time_attr: str = "training_iteration",
                 mode: str = "max", never_stop: Callable[[dict], bool] | None = None):
        super().__init__()
        self._group_of, self._metric, self._time_attr = group_of, metric, time_attr
        self._never_stop = never_stop
        self._sign = 1.0 if mode == "max" else -1.0
        self._max_t, self._rf = max_t, reduction_factor
        self._milestones = rungs(grace_period, reduction_factor, max_t)
        self._recorded: dict[tuple, dict[str, float]] = defaultdict(dict)  # (group, rung) -> values
        self._decisions: dict[tuple[str, int], str] = {}  # (trial id, rung) -> decision
        self.num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metric and mode are set here, per group

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        done = result.get(self._time_attr)
        if done is None:
            return TrialScheduler.CONTINUE
        if done >= self._max_t:
            return TrialScheduler.STOP
        reached = [m for m in self._milestones if m <= done]
        if not reached:
            return TrialScheduler.CONTINUE
        key = (trial.trial_id, reached[-1])
        if key not in self._decisions:  # a trial that reports a rung again gets its first decision
            decision = self._decide(self._group_of(trial.config), trial.trial_id,
                                    reached[-1], result.get(self._metric))
            if self._never_stop is not None and self._never_stop(trial.config):
                decision = TrialScheduler.CONTINUE  # recorded, so others are judged against it
            self._decisions[key] = decision
            self.num_stopped += decision == TrialScheduler.STOP
        return self._decisions[key]

    def _decide(self, group: Hashable, trial_id: str, rung: int, value) -> str:
        if value is None or not math.isfinite(value):
            return TrialScheduler.STOP
        recorded = self._recorded[group, rung]
        value = self._sign * float(value)
        cutoff = (np.percentile(list(recorded.values()), (1 - 1 / self._rf) * 100)
                  if recorded else None)
        recorded[trial_id] = value
        return TrialScheduler.STOP if cutoff is not None and value < cutoff else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return (f"Grouped ASHA: {self.num_stopped} stopped, rungs at {self._milestones} of "
                f"{self._max_t}, {len({g for g, _ in self._recorded})} groups")

    def records_keeper(self) -> Callback:
        """The callback to pass to Tune beside this scheduler, so that a resumed
        sweep keeps its rung records."""
        return _RungRecords(self)

    def state(self) -> dict:
        """Rung records and decisions (Tune pickles callback state: keys stay tuples)."""
        return {"recorded": dict(self._recorded), "decisions": dict(self._decisions),
                "num_stopped": self.num_stopped}

    def load_state(self, state: dict) -> None:
        self._recorded = defaultdict(dict, state["recorded"])
        self._decisions = dict(state["decisions"])
        self.num_stopped = state["num_stopped"]


class _RungRecords(Callback):
    def __init__(self, scheduler: GroupedASHA):
        self._scheduler = scheduler

    def get_state(self) -> dict | None:
        state = self._scheduler.state()
        return state if state["decisions"] else None  # None: nothing to save yet

    def set_state(self, state: dict) -> None:
        self._scheduler.load_state(state)
