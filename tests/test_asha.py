"""Grouped ASHA: λ values compete only within their (tissue, cluster, replicate)."""

import math
import pickle
from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler

from mtlrank_ray.distributed.asha import GroupedASHA
from mtlrank_ray.distributed.group_tasks import group_of

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def trial(tissue, cluster, lam, replicate=0):
    spec = {"tissue": tissue, "cluster": cluster, "replicate": replicate, "lambda": lam}
    return SimpleNamespace(trial_id=f"{tissue}-{cluster}-{replicate}-{lam}", config={"trial": spec})


def scheduler(**kwargs):
    return GroupedASHA(group_of, "score", **{"max_t": 8, "grace_period": 1, "reduction_factor": 2,
                                             "time_attr": "epoch", **kwargs})


def test_weak_groups_best_lambda_survives_a_strong_group():
    asha = scheduler()
    easy = [trial("Liver", 0, lam) for lam in (0.0, 0.01, 0.1)]
    hard = [trial("Liver", 1, lam) for lam in (0.0, 0.01, 0.1)]
    decisions = {}
    for epoch in (1, 2, 4):
        # The easy cluster reports first, far above anything the hard one reaches.
        for t, score in zip(easy, (0.90, 0.85, 0.80)):
            decisions[t.trial_id, epoch] = asha.on_trial_result(None, t, {"epoch": epoch, "score": score})
        for t, score in zip(hard, (0.10, 0.05, 0.02)):
            decisions[t.trial_id, epoch] = asha.on_trial_result(None, t, {"epoch": epoch, "score": score})
    assert all(decisions[hard[0].trial_id, e] == CONTINUE for e in (1, 2, 4))  # the hard group's best
    assert all(decisions[easy[0].trial_id, e] == CONTINUE for e in (1, 2, 4))
    assert decisions[hard[2].trial_id, 1] == STOP and decisions[easy[2].trial_id, 1] == STOP
    # Plain ASHA would have stopped the hard cluster's best λ at the first rung.
    pooled = scheduler()
    for t, score in zip(easy + hard, (0.90, 0.85, 0.80, 0.10, 0.05, 0.02)):
        t.config = {"trial": {**t.config["trial"], "cluster": 0}}
        last = pooled.on_trial_result(None, t, {"epoch": 1, "score": score})
    assert last == STOP


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_or_non_finite_metric_never_counts_as_good(bad):
    asha = scheduler()
    weak, broken = trial("Liver", 0, 0.0), trial("Liver", 0, 0.1)
    assert asha.on_trial_result(None, weak, {"epoch": 1, "score": -5.0}) == CONTINUE
    result = {"epoch": 1} if bad is None else {"epoch": 1, "score": bad}
    assert asha.on_trial_result(None, broken, result) == STOP
    # The broken trial was not recorded: a later weak trial is judged against -5 only.
    assert asha.on_trial_result(None, trial("Liver", 0, 1.0), {"epoch": 1, "score": -4.0}) == CONTINUE


def test_the_baseline_runs_to_the_end_and_still_counts():
    asha = scheduler(never_stop=lambda config: config["trial"]["lambda"] == 0)
    strong, baseline, weak = (trial("Liver", 0, lam) for lam in (0.01, 0.0, 0.1))
    assert asha.on_trial_result(None, strong, {"epoch": 1, "score": 0.9}) == CONTINUE
    assert asha.on_trial_result(None, baseline, {"epoch": 1, "score": 0.2}) == CONTINUE
    assert asha.on_trial_result(None, weak, {"epoch": 1, "score": 0.3}) == STOP  # against both
    assert asha.on_trial_result(None, baseline, {"epoch": 2, "score": 0.2}) == CONTINUE  # rung 2, first
    assert asha.on_trial_result(None, baseline, {"epoch": 8, "score": 0.2}) == STOP  # the last epoch
    plain = scheduler()  # what λ = 0 got before: stopped behind a stronger λ at the first rung
    plain.on_trial_result(None, strong, {"epoch": 1, "score": 0.9})
    assert plain.on_trial_result(None, baseline, {"epoch": 1, "score": 0.2}) == STOP


def test_rungs_and_last_epoch():
    asha = scheduler(grace_period=2)
    t = trial("Liver", 0, 0.0)
    assert asha.on_trial_result(None, t, {"epoch": 1, "score": 0.1}) == CONTINUE  # before the grace period
    assert asha.on_trial_result(None, t, {"epoch": 8, "score": 0.1}) == STOP  # max_t reached
    assert asha._milestones == [2, 4]


def test_rung_records_travel_through_the_tune_callback_state():
    asha = scheduler()
    assert asha.records_keeper().get_state() is None  # nothing to save yet
    asha.on_trial_result(None, trial("Liver", 0, 0.0), {"epoch": 1, "score": 0.9})
    state = pickle.loads(pickle.dumps(asha.records_keeper().get_state()))  # as Tune saves it
    restored = scheduler()
    restored.records_keeper().set_state(state)
    assert restored.on_trial_result(None, trial("Liver", 0, 0.1), {"epoch": 1, "score": 0.1}) == STOP
    assert scheduler().on_trial_result(None, trial("Liver", 0, 0.1), {"epoch": 1, "score": 0.1}) == CONTINUE


def curve(config):
    """A trainable whose validation score is fixed by its group and λ."""
    spec = config["trial"]
    level = 0.9 if spec["cluster"] == 0 else 0.1
    for epoch in range(1, 9):
        tune.report({"epoch": epoch, "score": level - spec["lambda"]})


@pytest.mark.slow
def test_in_a_tune_run_each_groups_best_lambda_runs_to_the_end(local_ray, tmp_path):
    grid = [{"tissue": "T", "cluster": c, "replicate": 0, "lambda": lam}
            for c in (0, 1) for lam in (0.0, 0.02, 0.04, 0.06)]
    results = tune.Tuner(
        curve, param_space={"trial": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(scheduler=scheduler(), max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="asha", verbose=0),
    ).fit()
    epochs = {(r.config["trial"]["cluster"], r.config["trial"]["lambda"]): r.metrics["epoch"] for r in results}
    assert epochs[0, 0.0] == 8 and epochs[1, 0.0] == 8  # each group's best λ is never stopped
    assert min(epochs.values()) < 8  # and weaker λ are
