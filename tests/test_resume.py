"""A sweep whose driver is killed resumes, and every trial finishes exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, SMALL_SETTINGS, write_config
from ray import tune

from mtlrank_ray.distributed.resume import restore_missing_checkpoints, swept_trials

# 16 trials one at a time, so the sweep spans several of Tune's snapshots to storage
# (10 s apart or more): it is interrupted when some but not all of its trials are
# recorded there, as a real sweep would be.
EPOCHS = 24


def finished_trials(sweep):
    """Trial folder -> its result.json text, for trials that reported their last epoch."""
    done = {}
    for result in sweep.glob("*/result.json"):
        lines = result.read_text().splitlines()
        if lines and json.loads(lines[-1])["epoch"] == EPOCHS:
            done[result.parent.name] = result.read_text()
    return done


@pytest.mark.slow
def test_killed_driver_resumes_every_trial_once(small_atlas_template, tmp_path):
    shutil.copy(REPO / "tune.py", tmp_path)
    config = write_config(tmp_path / "sweep.yaml", {
        **SMALL_SETTINGS, "training": {"epochs": EPOCHS, "batch_size": 64},
        "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False},
        "resources": {"max_concurrent_trials": 1}})
    out = tmp_path / "run"
    command = [sys.executable, "tune.py", "--data", str(small_atlas_template), "--config", str(config),
               "--out", str(out), "-q"]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(finished_trials(out / "sweep")) < 3:
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = finished_trials(out / "sweep")
    assert 3 <= len(before) < 16
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = finished_trials(out / "sweep")
    assert len(after) == 16  # every trial finished
    for name, text in before.items():
        assert after[name] == text  # trials finished before the kill were not run again
    genes = pd.read_parquet(out / "gene_r2.parquet")
    key = ["tissue", "cluster", "replicate", "model", "lambda", "gene"]
    assert not genes.duplicated(key).any()
    networks = genes[genes.model == "mtlrank"]
    assert len(networks) == 2 * 16 * 2 and (networks.epochs_run == EPOCHS).all()
    assert (genes.model == "lasso").sum() == 2 * 16 and genes.test_r2.notna().all()


def test_resume_without_a_sweep_says_so(small_atlas_template, tmp_path, capsys):
    from mtlrank_ray.cli import tune_main
    config = write_config(tmp_path / "c.yaml", SMALL_SETTINGS)
    code = tune_main(["--data", str(small_atlas_template), "--config", str(config),
                      "--out", str(tmp_path / "run"), "--resume", "-q"])
    assert code == 2
    assert "there is no sweep to resume" in capsys.readouterr().err


def counting(config):
    """Four epochs with a checkpoint each; fails once after the third (a lost driver's
    trial, in effect)."""
    start = 0
    if tune.get_checkpoint():
        with tune.get_checkpoint().as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    for epoch in range(start + 1, 5):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))
        if epoch == 3 and not Path(config["failed_once"]).exists():
            Path(config["failed_once"]).touch()
            raise RuntimeError("lost")


def test_resume_mends_a_checkpoint_deleted_after_the_last_snapshot(local_ray, tmp_path):
    tune.Tuner(counting, param_space={"failed_once": str(tmp_path / "failed")},
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="sweep", verbose=0)).fit()
    (trial,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    named = trial / "checkpoint_000002"  # what the snapshot names: the third epoch's
    assert restore_missing_checkpoints(swept_trials(str(tmp_path / "sweep"))) == 0  # all there
    named.rename(trial / "checkpoint_000003")  # Tune deleted it after a newer one came
    assert restore_missing_checkpoints(swept_trials(str(tmp_path / "sweep"))) == 1
    (result,) = tune.Tuner.restore(str(tmp_path / "sweep"), trainable=counting,
                                   resume_errored=True).fit()
    assert result.error is None and result.metrics["epoch"] == 4
