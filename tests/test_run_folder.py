"""A run folder holds every tissue run into it; --fresh starts it over."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, SMALL_SETTINGS, write_config

pytestmark = pytest.mark.slow
SETTINGS = {**SMALL_SETTINGS, "training": {"epochs": 2, "batch_size": 64},
            "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False}}


def tune(folder, data, *extra):
    """tune.py run from a folder holding data/ (as the notebook is), with no --data."""
    for name in ("data", "truth"):
        if not (folder / name).exists():
            (folder / name).symlink_to(data / name)
    return subprocess.run([sys.executable, "tune.py", "--config", "sweep.yaml", "--out", "run", "-q",
                           *extra], cwd=folder, capture_output=True, text=True, timeout=600)


def test_a_subset_run_replaces_its_tissues_and_keeps_the_others(small_atlas_template, tmp_path):
    shutil.copy(REPO / "tune.py", tmp_path)
    write_config(tmp_path / "sweep.yaml", SETTINGS)
    run = tmp_path / "run"
    assert tune(tmp_path, small_atlas_template).returncode == 0
    genes = pd.read_parquet(run / "gene_r2.parquet")
    kidney_models = {p.name: p.read_bytes() for p in (run / "models").glob("Kidney_Left_*")}
    assert set(genes.tissue) == {"Kidney_Left", "Liver"} and kidney_models

    done = tune(tmp_path, small_atlas_template, "--tissue", "Liver")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [p for p in (run / "sweep").iterdir() if p.is_dir() and p.name not in ("baselines", "rankings")]
    assert {p.name.split("_c")[0] for p in trials} == {"Liver"}
    assert {p.name.split("_c")[0] for p in (run / "sweep" / "baselines").iterdir()} == {"Liver"}
    after = pd.read_parquet(run / "gene_r2.parquet")
    key = ["tissue", "cluster", "replicate", "model", "lambda", "gene"]
    assert not after.duplicated(key).any() and len(after) == len(genes)
    pd.testing.assert_frame_equal(after[after.tissue == "Kidney_Left"].reset_index(drop=True),
                                  genes[genes.tissue == "Kidney_Left"].reset_index(drop=True))
    assert {p.name: p.read_bytes() for p in (run / "models").glob("Kidney_Left_*")} == kidney_models
    selected = pd.read_csv(run / "selected.csv")
    assert {p.name for p in (run / "models").glob("Liver_*")} == {
        f"Liver_c{r['cluster']}_r{r['replicate']}_{suffix}.npz"
        for r in selected[selected.tissue == "Liver"].to_dict("records")
        for suffix in {f"lambda{r['lambda']:g}", "lambda0", "lasso", "grnboost2"}}
    assert set(pd.read_parquet(run / "rankings.parquet").tissue) == {"Kidney_Left", "Liver"}
    assert set(selected.tissue) == {"Kidney_Left", "Liver"}
    summary = (run / "summary.md").read_text()
    assert "Kept from earlier runs: Kidney_Left." in summary and f"Data: {tmp_path};" in summary

    # Other settings would mix two sweeps in one folder: refused before any trial.
    write_config(tmp_path / "sweep.yaml", {**SETTINGS, "training": {"epochs": 3, "batch_size": 64}})
    refused = tune(tmp_path, small_atlas_template, "--tissue", "Liver")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "training.epochs" in refused.stderr and "--fresh" in refused.stderr
    assert pd.read_parquet(run / "gene_r2.parquet").equals(after)

    # A folder whose models are named as before trials were named by λ's full name.
    write_config(tmp_path / "sweep.yaml", SETTINGS)
    model = next((run / "models").glob("Kidney_Left_*_lambda0.npz"))
    model.rename(run / "models" / model.name.replace("_lambda0", "_lam0"))
    refused = tune(tmp_path, small_atlas_template, "--tissue", "Liver")
    assert refused.returncode == 2 and "earlier version" in refused.stderr and "--fresh" in refused.stderr

    fresh = tune(tmp_path, small_atlas_template, "--tissue", "Liver", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert set(pd.read_parquet(run / "gene_r2.parquet").tissue) == {"Liver"}
    assert not list((run / "models").glob("Kidney_Left_*"))
    assert set(pd.read_parquet(run / "rankings.parquet").tissue) == {"Liver"}


def test_the_cards_command_without_data_here_says_what_to_do(tmp_path):
    shutil.copy(REPO / "tune.py", tmp_path)
    for command in (["--tissue", "all"], ["--resume"]):  # the product card's, and its resume
        done = subprocess.run([sys.executable, "tune.py", *command], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"error: no data/ folder in {tmp_path}: run from the folder that holds data/, or pass "
            "--data DIR (or --demo for the demo atlas)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune.py"]  # nothing written
