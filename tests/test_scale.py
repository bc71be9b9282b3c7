"""What a sweep writes and where its side work runs: the checkpoint policy, the
model files, the shared expression matrix, baselines and rankings beside the trials."""

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from conftest import SMALL_SETTINGS
from ray import tune

from mtlrank_ray.analysis.rankings import group_rankings
from mtlrank_ray.config import config_from_dict
from mtlrank_ray.core.cluster_data import ClusterData
from mtlrank_ray.core.trial import Trial, load_model
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.distributed import ray_data, trainable, trial_storage, tuner
from mtlrank_ray.distributed.group_tasks import GroupsFinished, GroupTasks
from mtlrank_ray.distributed.search_space import trials_per_group
from mtlrank_ray.errors import InputError
from mtlrank_ray.run_storage import MODEL, experiment_path

EPOCHS = 6
CRASH_AFTER = 3  # the epoch after whose report a crashing trial fails, once


@pytest.fixture(scope="module")
def store(small_atlas_template, tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "store"
    prepare_store(small_atlas_template, config_from_dict(SMALL_SETTINGS), path, tissues="Liver")
    return path


def settings(**run):
    return config_from_dict({**SMALL_SETTINGS, "training": {"epochs": EPOCHS, "batch_size": 64},
                             "search": {"lambdas": [0.01], "replicates": 1},
                             "asha": {"enabled": False}, "run": run})


def crash_once(config, tissues, settings):
    """train_trial, failing once right after reporting epoch CRASH_AFTER (a node lost
    between checkpoints, in effect)."""
    marker = Path(config["marker"] + Trial.from_config(config["trial"]).name)
    report = tune.report

    def report_then_crash(metrics, checkpoint=None):
        report(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == CRASH_AFTER and not marker.exists():
            marker.touch()
            raise RuntimeError("node lost")

    tune.report = report_then_crash
    try:
        trainable.train_trial(config, tissues, settings)
    finally:
        tune.report = report


def run(store, out, config, train=trainable.train_trial):
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    marker = str(out / "crashed-")
    wrapped = (lambda c, **kw: train({**c, "marker": marker}, **kw)) if train is crash_once else train
    grid = tuner.run_sweep(blocks, config, out, verbose=0, trainable=wrapped)
    assert not [r.error for r in grid if r.error]
    return {r.config["trial"]["cluster"]: r for r in grid}


@pytest.mark.parametrize("every", [2, None])
def test_a_crashed_trial_goes_on_from_its_last_checkpoint_exactly(local_ray, store, tmp_path, every):
    config = settings(checkpoint_every_epochs=every, checkpoint_every_s=None)
    reference = run(store, tmp_path / "reference", config)
    crashed = run(store, tmp_path / "crashed", config, train=crash_once)
    for cluster, result in crashed.items():
        epochs = result.metrics_dataframe.epoch.tolist()
        # Each epoch after the last checkpoint before the crash is trained again, no more.
        resumed_from = every * (CRASH_AFTER // every) if every else 0
        assert epochs == [*range(1, CRASH_AFTER + 1), *range(resumed_from + 1, EPOCHS + 1)]
        for key in ("best_epoch", "best_val_r2", "best_test_r2"):
            assert result.metrics[key] == reference[cluster].metrics[key]  # exact on the CPU
        _, weights = load_model(Path(result.path, MODEL).read_bytes())
        _, expected = load_model(Path(reference[cluster].path, MODEL).read_bytes())
        for name in expected:
            np.testing.assert_array_equal(weights[name], expected[name])


def test_a_trial_writes_its_model_once_and_state_only_when_due(local_ray, store, tmp_path):
    config = settings(checkpoint_every_epochs=2, checkpoint_every_s=None)
    for result in run(store, tmp_path, config).values():
        written = result.metrics_dataframe.storage_bytes.diff().fillna(
            result.metrics_dataframe.storage_bytes).tolist()
        model_bytes = Path(result.path, MODEL).stat().st_size
        # States after epochs 2 and 4 (not 6: the trial is done); the model at the last
        # epoch, the only one where a trial without early stopping ends.
        # (a state's size grows a little with its training history)
        state_bytes = written[3]
        assert written == [0, pytest.approx(state_bytes, rel=0.01), 0, state_bytes, 0, model_bytes]
        assert model_bytes < state_bytes / 3  # best weights alone, not the trainer's state
        # The last checkpoint holds the last report; it replaced the states.
        assert os.listdir(result.checkpoint.to_directory()) == [trial_storage.FINISHED]
        last = json.loads(Path(result.checkpoint.path, trial_storage.FINISHED).read_text())
        assert (last["epoch"], last["best_test_r2"]) == (6, result.metrics["best_test_r2"])
        assert not list(Path(result.path).glob(f"checkpoint_*/{trial_storage.STATE}"))


def test_a_stopped_trials_model_holds_its_best_epoch(local_ray, store, tmp_path):
    config = config_from_dict({**SMALL_SETTINGS, "training": {"epochs": 8, "batch_size": 64},
                               "search": {"lambdas": [0.0, 1.0, 3.0], "replicates": 1},
                               "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 3}})
    assert trial_storage.ending_epochs(config, 8, baseline=False) == {1, 3, 8}
    results = tuner.run_sweep({"Liver": ray_data.materialize_tissue(str(store), "Liver")}, config,
                              tmp_path, verbose=0)
    stopped = [r for r in results if r.metrics["epoch"] < 8]
    assert stopped  # strong λ lose at a rung
    tissue = load_tissue(store, "Liver")
    for result in stopped:
        genes, weights = load_model(Path(result.path, MODEL).read_bytes())
        spec = result.config["trial"]
        assert genes == ClusterData.from_tissue(tissue, spec["cluster"]).genes
        reports = result.metrics_dataframe
        written_at = reports.epoch[np.diff([0, *reports.storage_bytes]) > 0].tolist()
        assert written_at and set(written_at) <= {1, 3}  # only where it could be stopped
        assert written_at[-1] == result.metrics["epoch"] or reports.best_epoch.iloc[-1] <= written_at[-1]


RANKINGS_SUBMITTED = "rankings-submitted"


def last_waits_for_rankings(config, tissues, settings):
    """train_trial; the sweep's last trial to start first waits (a minute at most) until the
    driver has submitted two groups' rankings. Had the driver kept them for the sweep's end,
    it would wait in vain, and the sweep would end with none submitted."""
    gate = Path(config["gate"])
    (gate / Trial.from_config(config["trial"]).name).touch()
    if len([p for p in gate.iterdir() if p.name != RANKINGS_SUBMITTED]) == config["trials"]:
        deadline = time.monotonic() + 60
        while not (gate / RANKINGS_SUBMITTED).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    trainable.train_trial({"trial": config["trial"]}, tissues, settings)


def test_baselines_and_rankings_run_beside_the_trials(local_ray, store, tmp_path):
    """With one trial at a time on two CPUs, one CPU is free: every lasso baseline and the
    rankings of groups done early run before the last trial ends (the rankings ahead of
    the queued GRNBoost2 fits), and the rankings equal those ranked afterwards from the
    stored model."""
    config = config_from_dict({**SMALL_SETTINGS, "training": {"epochs": 2, "batch_size": 64},
                               "search": {"lambdas": [0.0, 0.01], "replicates": 1},
                               "asha": {"enabled": False},
                               "resources": {"max_concurrent_trials": 1}})
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    experiment = experiment_path(config, tmp_path)
    tasks = GroupTasks(blocks, config, experiment)
    tasks.add_baselines(tuner.groups(list(blocks.values()), config))
    gate = tmp_path / "gate"
    gate.mkdir()

    def open_gate():  # beside Tune's loop on the driver, as a user would watch it
        while not (gate / RANKINGS_SUBMITTED).exists() and not swept.is_set():
            if sum(kind == "rankings" for kind, _, _ in tasks.submitted) >= 2:
                (gate / RANKINGS_SUBMITTED).touch()
            time.sleep(0.1)

    swept = threading.Event()
    watcher = threading.Thread(target=open_gate, daemon=True)
    watcher.start()
    trials = len(tuner.trial_grid(list(blocks.values()), config))
    trainable = lambda c, **kw: last_waits_for_rankings({**c, "gate": str(gate), "trials": trials}, **kw)
    GroupsFinished.tasks = tasks
    try:
        grid = tuner.run_sweep(blocks, config, tmp_path, verbose=0, trainable=trainable,
                               callbacks=(GroupsFinished(trials_per_group(config.search)),))
    finally:
        GroupsFinished.tasks = None
        swept.set()
        watcher.join()
    ended = time.monotonic()
    tasks.finish()
    assert not tasks.failed
    during = [(kind, group) for kind, group, at in tasks.submitted if at < ended]
    assert sum(kind == "lasso" for kind, _ in during) == 4
    assert sum(kind == "rankings" for kind, _ in during) >= 2
    assert sorted(method for _, method in tasks.baselines) == ["grnboost2"] * 4 + ["lasso"] * 4
    assert len(tasks.rankings) == 4
    tissue = load_tissue(store, "Liver")
    for trial, rows in tasks.rankings.items():
        cluster, replicate = trial.cluster, trial.replicate
        means = {r.config["trial"]["lambda"]: np.mean(r.metrics["best_val_r2"]) for r in grid
                 if r.config["trial"]["cluster"] == cluster}
        assert trial.lam == max(sorted(means), key=means.get)
        data = ClusterData.from_tissue(tissue, cluster)
        _, weights = load_model(Path(experiment, trial.name, MODEL).read_bytes())
        expected = group_rankings("Liver", cluster, replicate, data, tissue.tfs, weights, config.search)
        pd.testing.assert_frame_equal(rows, expected)


def test_trials_of_a_node_share_one_expression_matrix(local_ray, store):
    blocks = ray_data.materialize_tissue(str(store), "Liver")

    @ray.remote(num_cpus=0)
    class Meeting:
        def __init__(self):
            self.arrived = 0

        def arrive(self) -> int:
            self.arrived += 1
            return self.arrived

        def count(self) -> int:
            return self.arrived

    @ray.remote
    def address(tissue, meeting):
        data = ray_data.cluster_data(tissue, 0)
        ray.get(meeting.arrive.remote())
        deadline = time.time() + 120
        while ray.get(meeting.count.remote()) < 2:  # both hold the matrix at once: two processes
            assert time.time() < deadline, "the other task never started"
            time.sleep(0.05)
        return data.expression.ctypes.data, data.expression.flags.writeable, os.getpid()

    meeting = Meeting.remote()
    first, second = ray.get([address.remote(blocks, meeting), address.remote(blocks, meeting)])
    assert first[2] != second[2]  # two worker processes
    assert not first[1]  # the object store's read-only copy, not a private one
    expected = load_tissue(store, "Liver").expression
    np.testing.assert_array_equal(ray_data.cluster_data(blocks, 0).expression, expected)
    assert "expression" not in dict(blocks.refs)  # the Arrow blocks were let go


def test_a_sweep_of_other_tissues_is_not_resumed(local_ray, store, tmp_path):
    config = config_from_dict({**SMALL_SETTINGS, "training": {"epochs": 1, "batch_size": 64},
                               "search": {"lambdas": [0.0], "replicates": 1}, "asha": {"enabled": False}})
    liver = ray_data.materialize_tissue(str(store), "Liver")
    tuner.run_sweep({"Liver": liver}, config, tmp_path, verbose=0)
    with pytest.raises(InputError, match="covers the tissues Liver; resume it with --tissue Liver"):
        tuner.run_sweep({"Liver": liver, "Kidney_Left": liver}, config, tmp_path, resume_sweep=True, verbose=0)
