"""Successive halving within groups of competing trials, decided once per group and rung.

Ray's ASHA compares every trial with every other, and decides each trial as it
reaches a rung, against those that reached it before: which trials are stopped
depends on timing. In this sweep only the configurations (λ and any searched
setting) of one (tissue, cluster, replicate) compete, and the group's size is
known in advance, so this scheduler decides a group's rung once every trial of
the group has reached it: a trial that arrives first is paused (its checkpoint
kept, its slot free for other groups' trials) until the last one arrives; then
those below the (1 - 1/reduction_factor) quantile of the group's values at the
rung are stopped and the rest go on. Rungs are ASHA's (grace_period ·
reduction_factor^k epochs, below max_t). The outcome depends on the values only,
never on the order: two runs of one config stop the same trials.

A missing or non-finite metric never counts as good: such a trial is stopped at
its rung and not compared. A trial that has ended (stopped, failed, finished)
no longer holds its group's later rungs back. A trial that reports a rung again
(restarted from an earlier checkpoint) gets the decision its group got there.
Trials for which `never_stop(config)` holds (the sweep's λ = 0 baseline) are
compared like any other but never paused or stopped, so the baseline the chosen λ
is compared with always trains to the end.

A resumed sweep starts from a snapshot, which may predate what happened next:
- Tune requeues a paused trial as pending (`_requeue_restored_trials`,
  ray/tune/execution/tune_controller.py), and starts every pending trial it has
  resources for, not only the one `choose_trial_to_run` names (`_maybe_add_actors`,
  same file): one still waiting at its rung is paused again as Tune adds it
  (`on_trial_add`), so it runs only once its group decides (run on, it would
  pass the rung undecided).
- A trial its group stopped after the snapshot is stopped again, at once.
- A trial that ended after the snapshot reports its last result again, and
  nothing of the rungs its group has not recorded yet; under `history` a result
  may carry the metric of each of its epochs so far (index epoch - 1), from
  which those rungs are recorded. Without them its group's next rung would be
  decided without it, or never.

Tune saves a scheduler nowhere: a resumed sweep takes it from tuner.pkl, as it
was when the sweep was created. Its records travel instead in a Tune callback
(`GroupedASHA.records_keeper()`), whose state Tune saves with every experiment
snapshot and gives back on resume; the callback and the scheduler are pickled
together in tuner.pkl, so the restored callback still holds the restored
scheduler.
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
                 grace_period: int, reduction_factor: int, group_size: int,
                 time_attr: str = "training_iteration", mode: str = "max",
                 never_stop: Callable[[dict], bool] | None = None, history: str | None = None):
        super().__init__()
        self._group_of, self._metric, self._time_attr = group_of, metric, time_attr
        self._history = history
        self._never_stop = never_stop
        self._sign = 1.0 if mode == "max" else -1.0
        self._max_t, self._rf, self._group_size = max_t, reduction_factor, group_size
        self._milestones = rungs(grace_period, reduction_factor, max_t)
        self._recorded: dict[tuple, dict[str, float]] = defaultdict(dict)  # (group, rung) -> values
        self._decisions: dict[tuple[str, int], str] = {}  # (trial id, rung) -> decision
        self._ended: dict[Hashable, dict[str, int]] = defaultdict(dict)  # group -> {trial id: epoch}
        self._protected: set[str] = set()  # trial ids never stopped (never_stop)
        self._paused_at: dict[str, int] = {}  # trial id -> the rung it was paused at
        self._stopped: set[str] = set()  # trial ids decided out at a rung
        self.num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metric and mode are set here, per group

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        done = result.get(self._time_attr)
        if done is None:
            return TrialScheduler.CONTINUE
        if trial.trial_id in self._stopped:  # decided out, yet requeued by a resume
            return TrialScheduler.STOP
        group = self._group_of(trial.config)
        earlier = result.get(self._history) if self._history else None
        for rung in self._milestones if earlier else ():  # rungs passed after the snapshot
            if (rung <= min(done, len(earlier)) and (trial.trial_id, rung) not in self._decisions
                    and trial.trial_id not in self._recorded[group, rung]):
                self._record(trial, group, rung, earlier[rung - 1])
        if done >= self._max_t:
            return TrialScheduler.STOP
        reached = [m for m in self._milestones if m <= done]
        if not reached:
            return TrialScheduler.CONTINUE
        key = (trial.trial_id, reached[-1])
        if key in self._decisions:  # decided, or a trial reporting its rung again
            return self._decisions[key]
        self._record(trial, group, key[1], result.get(self._metric))
        self._settle(tune_controller, group)
        if key not in self._decisions:
            self._paused_at[trial.trial_id] = key[1]
            return TrialScheduler.PAUSE
        return self._decisions[key]

    def _record(self, trial, group: Hashable, rung: int, value: float | None) -> None:
        key = (trial.trial_id, rung)
        if value is None or not math.isfinite(value):
            self._stop(key, group)
            return
        self._recorded[group, rung][trial.trial_id] = self._sign * float(value)
        if self._never_stop is not None and self._never_stop(trial.config):
            self._protected.add(trial.trial_id)
            self._decisions[key] = TrialScheduler.CONTINUE  # compared, never held back

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._end(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        if trial.should_recover():  # Tune requeues it (a retry, a lost node): it comes back
            self._paused_at.pop(trial.trial_id, None)
            return
        self._end(tune_controller, trial, trial.last_result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._end(tune_controller, trial, trial.last_result)

    def on_trial_add(self, tune_controller, trial) -> None:
        """A resume adds its trials again, unfinished ones as pending: one this scheduler
        holds at a rung, or has decided out, is paused again, for Tune runs a paused
        trial only when `choose_trial_to_run` names it."""
        rung = self._paused_at.get(trial.trial_id)
        held = rung is not None and self._decisions.get((trial.trial_id, rung)) != TrialScheduler.CONTINUE
        if trial.status == trial.PENDING and (held or trial.trial_id in self._stopped):
            trial.set_status(trial.PAUSED)

    def choose_trial_to_run(self, tune_controller):
        """New trials first, then paused ones whose group has decided they go on; one
        decided out is stopped here if it was still pausing then."""
        trials = [t for t in tune_controller.get_trials() if t.status in (t.PENDING, t.PAUSED)]
        for trial in trials:
            if trial.trial_id in self._stopped and trial.trial_id not in self._paused_at:
                tune_controller.stop_trial(trial)  # decided out before a resume requeued it
            elif trial.status == trial.PENDING and trial.trial_id not in self._paused_at:
                return trial
        for trial in trials:
            if trial.status not in (trial.PENDING, trial.PAUSED):  # stopped just now
                continue
            rung = self._paused_at.get(trial.trial_id)
            decision = self._decisions.get((trial.trial_id, rung)) if rung is not None else None
            if rung is not None and decision is None:
                continue  # its group has not decided yet
            self._paused_at.pop(trial.trial_id, None)
            if decision == TrialScheduler.STOP:
                tune_controller.stop_trial(trial)
                continue
            return trial
        return None

    def _end(self, tune_controller, trial, result: dict | None) -> None:
        """A trial that reports no more (finished, stopped, failed) holds no rung back."""
        group = self._group_of(trial.config)
        if trial.trial_id not in self._ended[group]:
            self._ended[group][trial.trial_id] = (result or {}).get(self._time_attr) or 0
        self._paused_at.pop(trial.trial_id, None)
        self._settle(tune_controller, group)

    def _stop(self, key: tuple[str, int], group: Hashable) -> None:
        self._decisions[key] = TrialScheduler.STOP
        self._stopped.add(key[0])
        self._ended[group][key[0]] = key[1]
        self.num_stopped += 1

    def _settle(self, tune_controller, group: Hashable) -> None:
        """Decide every rung of `group` that all its trials have reached or ended before."""
        for rung in self._milestones:
            recorded = self._recorded[group, rung]
            open_ = [t for t in recorded if (t, rung) not in self._decisions]
            passed = {t for t, epoch in self._ended[group].items() if epoch <= rung} | set(recorded)
            if len(passed) < self._group_size:
                return  # later rungs wait for this one
            if not open_:
                continue
            cutoff = np.percentile(list(recorded.values()), (1 - 1 / self._rf) * 100)
            for trial_id in sorted(open_):
                if recorded[trial_id] < cutoff and trial_id not in self._protected:
                    self._stop((trial_id, rung), group)
                else:
                    self._decisions[trial_id, rung] = TrialScheduler.CONTINUE
            self._release(tune_controller, open_, rung)

    def _release(self, tune_controller, decided: list[str], rung: int) -> None:
        """Paused trials just decided out end now; those decided in, and any still
        pausing, are left to `choose_trial_to_run`."""
        out = {t for t in decided if self._paused_at.get(t) == rung
               and self._decisions[t, rung] == TrialScheduler.STOP}
        if tune_controller is None or not out:
            return
        for trial in tune_controller.get_trials():
            if trial.trial_id in out and (trial.status in (trial.PAUSED, trial.PENDING) or trial.is_saving):
                del self._paused_at[trial.trial_id]
                tune_controller.stop_trial(trial)

    def debug_string(self) -> str:
        waiting = sum((t, r) not in self._decisions for t, r in self._paused_at.items())
        return (f"Grouped successive halving: {self.num_stopped} stopped, {waiting} waiting for "
                f"their group, rungs at {self._milestones} of {self._max_t}")

    def records_keeper(self) -> Callback:
        """The callback to pass to Tune beside this scheduler, so that a resumed
        sweep keeps its records."""
        return _RungRecords(self)

    def state(self) -> dict:
        """Records and decisions (Tune pickles callback state: keys stay tuples)."""
        return {"recorded": dict(self._recorded), "decisions": dict(self._decisions),
                "ended": dict(self._ended), "protected": set(self._protected),
                "paused_at": dict(self._paused_at), "num_stopped": self.num_stopped}

    def load_state(self, state: dict) -> None:
        self._recorded = defaultdict(dict, state["recorded"])
        self._decisions = dict(state["decisions"])
        self._ended = defaultdict(dict, state["ended"])
        self._protected, self._paused_at = set(state["protected"]), dict(state["paused_at"])
        self.num_stopped = state["num_stopped"]
        self._stopped = {t for (t, _), decision in self._decisions.items() if decision == TrialScheduler.STOP}


class _RungRecords(Callback):
    def __init__(self, scheduler: GroupedASHA):
        self._scheduler = scheduler

    def get_state(self) -> dict | None:
        state = self._scheduler.state()
        nothing = not any(state["recorded"].values()) and not state["decisions"] and not state["ended"]
        return None if nothing else state  # None: nothing to save yet

    def set_state(self, state: dict) -> None:
        self._scheduler.load_state(state)
