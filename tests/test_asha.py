"""Grouped successive halving: λ values compete only within their (tissue, cluster,
replicate), and a group's rung is decided once all its trials have reached it."""

import itertools
import math
import pickle
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.experiment import Trial as TuneTrial
from ray.tune.schedulers import TrialScheduler

from mtlrank_ray.distributed.asha import GroupedASHA
from mtlrank_ray.distributed.group_tasks import group_of

CONTINUE, STOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.PAUSE
STATUSES = {name: getattr(TuneTrial, name) for name in ("PENDING", "RUNNING", "PAUSED", "TERMINATED")}


def trial(tissue, cluster, lam, replicate=0):
    spec = {"tissue": tissue, "cluster": cluster, "replicate": replicate, "lambda": lam}
    t = SimpleNamespace(trial_id=f"{tissue}-{cluster}-{replicate}-{lam}", config={"trial": spec},
                        status=TuneTrial.RUNNING, is_saving=False, last_result={},
                        should_recover=lambda: False, **STATUSES)
    t.set_status = lambda status: setattr(t, "status", status)
    return t


class Controller:
    """What the scheduler asks of Tune's controller: its trials, and stopping one."""

    def __init__(self, trials):
        self.trials = list(trials)

    def get_trials(self):
        return self.trials

    def stop_trial(self, t):
        t.status = TuneTrial.TERMINATED


def scheduler(group_size, **kwargs):
    return GroupedASHA(group_of, "score", **{"max_t": 8, "grace_period": 1, "reduction_factor": 2,
                                             "group_size": group_size, "time_attr": "epoch", **kwargs})


def report(asha, controller, t, epoch, score):
    """One result, and what Tune does with the decision; returns the decision."""
    decision = asha.on_trial_result(controller, t, {"epoch": epoch, "score": score})
    if decision == PAUSE:
        t.status = TuneTrial.PAUSED
    elif decision == STOP:
        t.status = TuneTrial.TERMINATED
        asha.on_trial_complete(controller, t, {"epoch": epoch})
    return decision


def resume_paused(asha, controller):
    """Tune's loop: run whatever the scheduler chooses, while it chooses."""
    while (chosen := asha.choose_trial_to_run(controller)) is not None:
        chosen.status = TuneTrial.RUNNING


def stopped_after(order, scores, epochs=(1, 2, 4), group_size=4):
    """Trials of one group reporting rung by rung in `order`: the names of the stopped
    trials and the rung each was stopped at."""
    trials = {name: trial("Liver", 0, name) for name in scores}
    controller, asha = Controller(trials.values()), scheduler(group_size)
    for epoch in epochs:
        for name in order:
            if trials[name].status == TuneTrial.RUNNING:
                report(asha, controller, trials[name], epoch, scores[name])
        resume_paused(asha, controller)
    return {name: min(r for (t, r), d in asha._decisions.items() if t == trials[name].trial_id and d == STOP)
            for name in scores if trials[name].status == TuneTrial.TERMINATED}


def test_the_outcome_does_not_depend_on_the_order_trials_arrive_in():
    scores = {0.01: 0.9, 0.02: 0.8, 0.03: 0.7, 0.04: 0.6}
    outcomes = {repr(stopped_after(order, scores)) for order in itertools.permutations(scores)}
    # Successive halving: the weaker half at the first rung, then the weaker of two.
    assert outcomes == {repr({0.02: 2, 0.03: 1, 0.04: 1})}


def test_the_first_to_arrive_waits_for_its_group_and_stops_if_weaker():
    """Asynchronous ASHA never stops the first trial at a rung; here it waits, paused."""
    weak, strong = trial("Liver", 0, 0.1), trial("Liver", 0, 0.01)
    controller, asha = Controller([weak, strong]), scheduler(2)
    assert report(asha, controller, weak, 1, 0.2) == PAUSE
    assert asha.choose_trial_to_run(controller) is None  # its group has not decided
    assert report(asha, controller, strong, 1, 0.9) == CONTINUE
    assert weak.status == TuneTrial.TERMINATED  # stopped where it was paused, never resumed


def test_weak_groups_best_lambda_survives_a_strong_group():
    easy = [trial("Liver", 0, lam) for lam in (0.0, 0.01, 0.1)]
    hard = [trial("Liver", 1, lam) for lam in (0.0, 0.01, 0.1)]
    controller, asha = Controller(easy + hard), scheduler(3)
    for t, score in zip(easy + hard, (0.90, 0.85, 0.80, 0.10, 0.05, 0.02)):
        report(asha, controller, t, 1, score)
    resume_paused(asha, controller)
    assert [t.status for t in hard] == [TuneTrial.RUNNING, TuneTrial.RUNNING, TuneTrial.TERMINATED]
    assert [t.status for t in easy] == [TuneTrial.RUNNING, TuneTrial.RUNNING, TuneTrial.TERMINATED]
    # Pooled, the hard cluster's best λ would have been stopped.
    pooled = scheduler(6)
    for t, score in zip(easy + hard, (0.90, 0.85, 0.80, 0.10, 0.05, 0.02)):
        t.status, t.config = TuneTrial.RUNNING, {"trial": {**t.config["trial"], "cluster": 0}}
        report(pooled, controller, t, 1, score)
    resume_paused(pooled, controller)
    assert hard[0].status == TuneTrial.TERMINATED


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_or_non_finite_metric_never_counts_as_good(bad):
    weak, broken, other = trial("Liver", 0, 0.0), trial("Liver", 0, 0.1), trial("Liver", 0, 1.0)
    controller, asha = Controller([weak, broken, other]), scheduler(3)
    assert report(asha, controller, weak, 1, -5.0) == PAUSE
    result = {"epoch": 1} if bad is None else {"epoch": 1, "score": bad}
    assert asha.on_trial_result(controller, broken, result) == STOP  # at once, not compared
    asha.on_trial_complete(controller, broken, result)
    assert report(asha, controller, other, 1, -4.0) == CONTINUE  # compared with -5 only
    assert weak.status == TuneTrial.TERMINATED


def test_the_baseline_is_never_held_back_and_still_counts():
    asha = scheduler(3, never_stop=lambda config: config["trial"]["lambda"] == 0)
    baseline, strong, weak = (trial("Liver", 0, lam) for lam in (0.0, 0.01, 0.1))
    controller = Controller([baseline, strong, weak])
    assert report(asha, controller, baseline, 1, 0.2) == CONTINUE  # first, and not paused
    assert report(asha, controller, weak, 1, 0.3) == PAUSE
    assert report(asha, controller, strong, 1, 0.9) == CONTINUE
    assert weak.status == TuneTrial.PAUSED  # 0.3 is the median of (0.2, 0.3, 0.9): not below it
    resume_paused(asha, controller)
    assert weak.status == TuneTrial.RUNNING
    assert report(asha, controller, baseline, 2, 0.1) == CONTINUE  # weakest at rung 2, never stopped
    assert report(asha, controller, baseline, 8, 0.1) == STOP  # the last epoch


def test_a_trial_that_ends_early_no_longer_holds_its_group_back():
    waiting, failing = trial("Liver", 0, 0.01), trial("Liver", 0, 0.1)
    controller, asha = Controller([waiting, failing]), scheduler(2)
    assert report(asha, controller, waiting, 1, 0.5) == PAUSE
    failing.status = TuneTrial.TERMINATED
    asha.on_trial_error(controller, failing)  # failed before its first rung
    assert asha.choose_trial_to_run(controller) is waiting


def test_a_trial_tune_will_retry_still_holds_its_group_back():
    """A failure with retries left (a lost node): Tune requeues the trial, which will
    reach the rung from its checkpoint; the group waits for it."""
    waiting, retried = trial("Liver", 0, 0.01), trial("Liver", 0, 0.1)
    controller, asha = Controller([waiting, retried]), scheduler(2)
    assert report(asha, controller, waiting, 1, 0.5) == PAUSE
    retried.should_recover = lambda: True
    asha.on_trial_error(controller, retried)
    retried.status = TuneTrial.PENDING  # requeued
    assert asha.choose_trial_to_run(controller) is retried  # not the waiting one
    retried.status = TuneTrial.RUNNING
    assert report(asha, controller, retried, 1, 0.9) == CONTINUE
    assert waiting.status == TuneTrial.TERMINATED  # decided with the retried trial's value


def test_rungs_and_last_epoch():
    asha = scheduler(1, grace_period=2)
    t = trial("Liver", 0, 0.0)
    assert asha.on_trial_result(None, t, {"epoch": 1, "score": 0.1}) == CONTINUE  # before the grace period
    assert asha.on_trial_result(None, t, {"epoch": 2, "score": 0.1}) == CONTINUE  # alone in its group
    assert asha.on_trial_result(None, t, {"epoch": 8, "score": 0.1}) == STOP  # max_t reached
    assert asha._milestones == [2, 4]


def test_records_travel_through_the_tune_callback_state():
    first, second = trial("Liver", 0, 0.01), trial("Liver", 0, 0.1)
    asha = scheduler(2)
    assert asha.records_keeper().get_state() is None  # nothing to save yet
    report(asha, Controller([first]), first, 1, 0.9)
    state = pickle.loads(pickle.dumps(asha.records_keeper().get_state()))  # as Tune saves it
    restored = scheduler(2)
    restored.records_keeper().set_state(state)
    controller = Controller([first, second])
    assert report(restored, controller, second, 1, 0.1) == STOP  # judged against the first's 0.9
    assert restored.choose_trial_to_run(controller) is first


def restored(asha, **kwargs):
    """The scheduler a resumed sweep has: a new one, given the records Tune saved."""
    again = scheduler(asha._group_size, **kwargs)
    again.records_keeper().set_state(pickle.loads(pickle.dumps(asha.records_keeper().get_state())))
    return again


def resume_adds(asha, controller, trials):
    """Tune's resume: every unfinished trial added again as pending (paused ones
    included); Tune then starts every trial still pending, chosen or not."""
    for t in trials:
        t.status = TuneTrial.PENDING
        asha.on_trial_add(controller, t)


def test_a_paused_trial_a_resume_requeues_still_waits_for_its_group():
    """Run at once, a paused trial would go on from its checkpoint past a rung its
    group has not decided."""
    weak, strong, late, other = (trial("Liver", 0, lam) for lam in (0.1, 0.01, 0.001, 0.0))
    asha = scheduler(3)
    assert report(asha, Controller([weak, strong]), weak, 1, 0.2) == PAUSE
    assert report(asha, Controller([weak, strong]), strong, 1, 0.9) == PAUSE
    resumed = restored(asha)
    other.config = {"trial": {**other.config["trial"], "cluster": 1}}
    controller = Controller([weak, strong, late, other])
    resume_adds(resumed, controller, controller.trials)
    assert [t.status for t in controller.trials] == [TuneTrial.PAUSED] * 2 + [TuneTrial.PENDING] * 2
    assert resumed.choose_trial_to_run(controller) is late  # new; the waiting two stay
    late.status = TuneTrial.RUNNING
    assert resumed.choose_trial_to_run(controller) is other
    other.status = TuneTrial.RUNNING
    assert resumed.choose_trial_to_run(controller) is None
    assert report(resumed, controller, late, 1, 0.5) == CONTINUE  # the median: not below it
    assert weak.status == TuneTrial.TERMINATED  # decided out while still pending
    assert resumed.choose_trial_to_run(controller) is strong
    # Stopped, and then the driver killed before Tune recorded it: requeued again.
    strong.status = TuneTrial.RUNNING
    again = restored(resumed)
    resume_adds(again, controller, [weak])
    assert weak.status == TuneTrial.PAUSED  # not started before it is stopped
    assert again.choose_trial_to_run(controller) is None and weak.status == TuneTrial.TERMINATED
    assert again.on_trial_result(controller, weak, {"epoch": 2, "score": 0.9}) == STOP


def test_a_trial_that_ended_after_the_snapshot_still_counts_at_the_rungs_it_passed():
    """A resumed trial that had already finished reports its last result only; its
    values at the rungs come from the history in it, and the group decides as it
    would have without the interruption."""
    baseline = lambda config: config["trial"]["lambda"] == 0  # noqa: E731
    scores = {0.0: [0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], 0.01: [0.6, 0.4, 0.2, 0.2],
              0.1: [0.4], 0.02: [0.6, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35]}

    def run(interrupted: bool) -> dict[float, int]:
        trials = {lam: trial("Liver", 0, lam) for lam in scores}
        controller, asha = Controller(trials.values()), scheduler(4, never_stop=baseline)
        for lam, t in trials.items():
            report(asha, controller, t, 1, scores[lam][0])
        resume_paused(asha, controller)
        if interrupted:  # the snapshot; then the baseline finished; the driver was killed
            asha = restored(asha, never_stop=baseline, history="history")
            last = {"epoch": 8, "score": scores[0.0][-1], "history": scores[0.0]}
            assert asha.on_trial_result(controller, trials[0.0], last) == STOP
            asha.on_trial_complete(controller, trials[0.0], last)
            trials[0.0].status = TuneTrial.TERMINATED
        for epoch in range(2, 9):
            for lam, t in trials.items():
                if t.status == TuneTrial.RUNNING:
                    report(asha, controller, t, epoch, scores[lam][epoch - 1])
            resume_paused(asha, controller)
        stops = {}
        for (trial_id, rung), decision in sorted(asha._decisions.items()):
            if decision == STOP:
                stops.setdefault(float(trial_id.rsplit("-", 1)[1]), rung)
        return stops | {lam: 8 for lam, t in trials.items() if lam not in stops}

    assert run(interrupted=False) == {0.1: 1, 0.01: 4, 0.0: 8, 0.02: 8}
    assert run(interrupted=True) == run(interrupted=False)


def curve(config):
    """A trainable whose validation score is fixed by its group and λ; it checkpoints
    every epoch, so a paused trial goes on where it was."""
    spec, start = config["trial"], 1
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text()) + 1
    level = 0.9 if spec["cluster"] == 0 else 0.1
    for epoch in range(start, 9):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            tune.report({"epoch": epoch, "score": level - spec["lambda"]},
                        checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_in_a_tune_run_the_same_trials_stop_at_the_same_rungs_every_time(local_ray, tmp_path):
    grid = [{"tissue": "T", "cluster": c, "replicate": 0, "lambda": lam}
            for c in (0, 1) for lam in (0.0, 0.02, 0.04, 0.06)]
    runs = []
    for run in range(2):
        results = tune.Tuner(
            tune.with_resources(curve, {"cpu": 1}), param_space={"trial": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(scheduler=scheduler(4)),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name=f"asha{run}", verbose=0),
        ).fit()
        assert not results.errors
        runs.append({(r.config["trial"]["cluster"], r.config["trial"]["lambda"]): r.metrics["epoch"]
                     for r in results})
    # Per group: the weaker half at rung 1, the weaker of two at rung 2, the best to the end.
    expected = {(c, lam): epochs for c in (0, 1)
                for lam, epochs in ((0.0, 8), (0.02, 2), (0.04, 1), (0.06, 1))}
    assert runs == [expected, expected]
