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

from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import prepare_store
from mtlrank_ray.distributed.resume import restore_missing_checkpoints, swept_trials
from mtlrank_ray.run_storage import FINISHED, MODEL

# 16 trials one at a time, about 2 s each, so the sweep spans several of Tune's snapshots
# to storage (10 s apart or more): it is interrupted when some but not all of its trials
# are recorded there, as a real sweep would be.
EPOCHS = 100


def finished_trials(sweep, epochs=EPOCHS):
    """Trial folder -> its result.json text, for trials that reported their last epoch."""
    done = {}
    for result in sweep.glob("*/result.json"):
        lines = result.read_text().splitlines()
        if lines and json.loads(lines[-1])["epoch"] == epochs:
            done[result.parent.name] = result.read_text()
    return done


def assert_not_trained_again(before: str, after: str, epochs: int) -> None:
    """A trial's result.json after a resume: what it held and at most its last report
    again (a snapshot that names a checkpoint older than the trial's end resumes it,
    and it reports and ends), or that report alone (one that names none: Tune starts
    the trial's logs again)."""
    last = json.loads(before.splitlines()[-1])
    new = after[len(before):] if after.startswith(before) else after
    again = [json.loads(line) for line in new.splitlines()]
    assert len(again) <= 1 and (after.startswith(before) or again), after[:500]
    assert all(a["epoch"] == epochs and a["best_test_r2"] == last["best_test_r2"] for a in again)


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
    for name, text in before.items():  # trials finished before the kill were not run again
        assert_not_trained_again(text, after[name], EPOCHS)
    genes = pd.read_parquet(out / "gene_r2.parquet")
    key = ["tissue", "cluster", "replicate", "model", "lambda", "gene"]
    assert not genes.duplicated(key).any()
    networks = genes[genes.model == "mtlrank"]
    assert len(networks) == 2 * 16 * 2 and (networks.epochs_run == EPOCHS).all()
    assert (genes.model == "lasso").sum() == 2 * 16 and genes.test_r2.notna().all()


@pytest.mark.slow
@pytest.mark.parametrize("snapshot_period_s", ["auto", "3600"])
def test_a_trial_killed_between_its_last_report_and_its_end_is_not_trained_again(
        small_atlas_template, tmp_path, snapshot_period_s):
    """Tune counts a trial as running until its function returns: a driver killed in
    between leaves a snapshot in which a trial with all its results still runs, from
    its last checkpoint if a snapshot came after it (Tune's period, "auto": 10 s or
    more), or from none (a period of an hour: the one snapshot is the sweep's first,
    taken before any trial reported)."""
    store = tmp_path / "store"
    prepare_store(small_atlas_template, config_from_dict(SMALL_SETTINGS), store, tissues="Liver")
    epochs = 4
    config = write_config(tmp_path / "sweep.yaml", {
        **SMALL_SETTINGS, "training": {"epochs": epochs, "batch_size": 64},
        "search": {"lambdas": [0.01], "replicates": 1}, "asha": {"enabled": False}})
    hold, out = tmp_path / "hold", tmp_path / "run"
    hold.touch()
    command = [sys.executable, str(REPO / "tests" / "held_end_driver.py"), str(store), str(config),
               str(out), str(hold)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": snapshot_period_s})
    deadline = time.time() + 300
    try:  # two CPUs: two of Liver's four trials run, and wait at their end
        while len(list((out / "sweep").glob(f"*/{FINISHED}"))) < 2:
            assert driver.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    models = {path.parent.name: path.stat().st_mtime_ns for path in (out / "sweep").glob(f"*/{MODEL}")}
    stored = finished_trials(out / "sweep", epochs)  # the logs a snapshot uploaded
    assert len(models) == 2 and set(stored) <= set(models)
    if snapshot_period_s != "auto":
        assert not stored  # nothing was uploaded after the sweep's first snapshot
    hold.unlink()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = finished_trials(out / "sweep", epochs)
    assert len(after) == 4
    for name, written in models.items():  # the held trials were not trained again
        assert (out / "sweep" / name / MODEL).stat().st_mtime_ns == written
        last = json.loads((out / "sweep" / name / FINISHED).read_text())
        assert_not_trained_again(stored.get(name, json.dumps(last) + "\n"), after[name], epochs)


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


def stored(folder: Path) -> dict[str, tuple[bytes, float]]:
    """File name -> (bytes, mtime) of the files in a storage folder."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime) for p in folder.glob("*") if p.is_file()}


@pytest.mark.slow
def test_a_stored_sweep_is_never_replaced_by_mistake_and_resume_keeps_its_baselines(
        small_atlas_template, tmp_path):
    """The driver is killed once some baselines and a ranking are in storage. From a new
    folder (as on a new head), the same command is refused and changes nothing; with
    --resume, the stored fits and rankings are loaded, not redone."""
    storage = tmp_path / "storage"
    config = write_config(tmp_path / "sweep.yaml", {
        **SMALL_SETTINGS, "training": {"epochs": EPOCHS, "batch_size": 64},
        "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False},
        "resources": {"max_concurrent_trials": 1}, "run": {"storage_path": str(storage)}})
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(REPO / "tune.py", folder)
    command = [sys.executable, "tune.py", "--data", str(small_atlas_template), "--config", str(config),
               "--out", "run"]
    driver = subprocess.Popen(command + ["-q"], cwd=first, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = storage / "run" / "sweep"
    deadline = time.time() + 600
    try:
        while len(stored(sweep / "baselines")) < 3 or not stored(sweep / "rankings"):
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    time.sleep(2)  # a task's last upload, if the kill caught one
    fits, rankings = stored(sweep / "baselines"), stored(sweep / "rankings")
    assert 3 <= len(fits) < 16 and not (first / "run" / "gene_r2.parquet").exists()
    files = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}

    refused = subprocess.run(command, cwd=second, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {sweep} holds the sweep of Kidney_Left, Liver started "
        f"{json.loads((sweep / 'sweep.json').read_text())['created']} (it was interrupted, or is "
        "still running): pass --resume to continue it, or --fresh to delete it and start run "
        "over; --out names another run")
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == files

    resumed = subprocess.run(command + ["--resume"], cwd=second, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"kept from the interrupted sweep: {len(fits)} fits, {len(rankings)} rankings"
            in resumed.stdout), resumed.stdout
    after_fits, after_rankings = stored(sweep / "baselines"), stored(sweep / "rankings")
    assert len(after_fits) == 16 and len(after_rankings) == 8
    assert all(after_fits[name] == fits[name] for name in fits)  # loaded, not fitted again
    assert all(after_rankings[name] == rankings[name] for name in rankings)
    genes = pd.read_parquet(second / "run" / "gene_r2.parquet")
    assert (genes.model == "lasso").sum() == (genes.model == "grnboost2").sum() == 2 * 16
    assert json.loads((second / "run" / "sweep.json").read_text())["published"]

    # Its results are in this folder now: the same command replaces it, as a re-run does.
    again = subprocess.run(command + ["-q"], cwd=second, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    # ...but not from the first folder, which never received them.
    refused = subprocess.run(command + ["-q"], cwd=first, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "its results are not in run" in refused.stderr
