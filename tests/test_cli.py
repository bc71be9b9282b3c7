import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from mtlrank_ray.cli import main
from mtlrank_ray.data import load_tissue


def test_demo_data_command(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--cells", "Kidney (Left)=120,Liver=80",
                 "--tfs", "20", "--genes", "30", "--seed", "3"]) == 0
    assert "demo atlas written to" in capsys.readouterr().out
    assert (tmp_path / "d/truth/genes.csv").read_text().count("\n") == 1 + 2 * 30


def test_demo_data_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--tfs", "5000"]) == 2
    assert "the demo has at most" in capsys.readouterr().err


def test_prepare_prints_a_table(atlas, small_config, tmp_path, capsys):
    args = ["prepare", "--data", str(atlas), "--config", str(small_config), "--out", str(tmp_path / "s")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Kidney_Left" in out and "built (new)" in out
    assert main(args) == 0
    assert "reused (inputs and settings unchanged)" in capsys.readouterr().out


def test_the_demo_without_scvelo_says_so_and_reads_the_seed_layout(tmp_path, monkeypatch, capsys, caplog):
    """Where scVelo is missing the demo has no counts file: `tune.py --demo` names what is
    missing and goes on with the seed layout (here to its next check, an unknown tissue)."""
    from mtlrank_ray.cli import tune_main

    shutil.copytree(REPO / "tune_configs", tmp_path / "tune_configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mtlrank_ray.dev.demo.scvelo_available", lambda: False)
    assert tune_main(["--demo", "--tissue", "Heart"]) == 2
    assert "no counts file" in caplog.text and "reading its seed layout" in caplog.text
    assert "error: no tissue 'Heart' in the data; tissues: Kidney_Left, Liver" in capsys.readouterr().err
    assert not (tmp_path / "demo/data/h5ad").exists() and (tmp_path / "demo/data/processed").is_dir()


@pytest.mark.slow
def test_tune_py_demo_from_a_fresh_folder(tmp_path, monkeypatch):
    """README's quick start: `python tune.py --demo` writes the demo atlas, prepares
    its counts file (velocity as scVelo estimates it), runs the sweep and writes the
    results; a re-run reuses the store and replaces the results."""
    shutil.copy(REPO / "tune.py", tmp_path)
    shutil.copytree(REPO / "tune_configs", tmp_path / "tune_configs")
    for attempt in range(2):
        flags = ["--dashboard"] if attempt else []
        # This run's Ray session and its logs, in a temp dir short enough for Ray's sockets.
        with tempfile.TemporaryDirectory(prefix="mtlr-", ignore_cleanup_errors=True) as ray_tmp:
            run = subprocess.run([sys.executable, "tune.py", "--demo", *flags], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "RAY_TMPDIR": ray_tmp})
            assert run.returncode == 0, run.stderr[-3000:]
            # Ray retired no worker for being idle: such an exit in Ray 2.60 now and then
            # aborts and prints its crash (README, "A worker's abort as it exits").
            logs = Path(ray_tmp).glob("ray/session_2*/logs/*worker-*")
            text = {p.name: p.read_text(errors="replace") for p in logs}
            assert any(name.startswith("python-core-worker-") for name in text)
            assert not [name for name, log in text.items() if "exited because it was idle" in log]
            assert not [name for name, log in text.items() if "Mutex corrupt" in log]
        assert run.stdout.count("reused") == (2 if attempt else 0)
        assert ("Ray dashboard: http://127.0.0.1:" in run.stdout) == bool(attempt)
        assert ("`ray get-auth-token` prints it" in run.stdout) == bool(attempt)
        # A short console: a line per phase and the sweep's progress, none of TensorFlow's
        # start-up lines or Tune's per-trial tables.
        output = run.stdout + run.stderr
        assert len(output.splitlines()) < 60, output
        assert "oneDNN" not in output and "cuInit" not in output and "Trial status" not in output
        assert "no counts file" not in output  # the estimated layers are read
        assert "Remote file not found" not in output  # a trial ASHA paused keeps its log
        for log in (tmp_path / "runs/smoke/sweep").glob("*/result.json"):  # every epoch once
            epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
            assert epochs == list(range(1, len(epochs) + 1)), (log.parent.name, epochs)
        assert sum("reading the scVelo files" in line for line in output.splitlines()) == 1, output
        # The bottom line of fit, per tissue, under the results table.
        assert sum(line.split(": the chosen networks' mean test R² is ")[0] in ("Kidney_Left", "Liver")
                   for line in run.stdout.splitlines()) == 2, run.stdout
        genes = pd.read_parquet(tmp_path / "runs/smoke/gene_r2.parquet")
        # The genes scVelo estimated velocity for in enough cells, up to 40 a tissue.
        stored = {t: load_tissue(tmp_path / "runs/smoke/store", t) for t in ("Kidney_Left", "Liver")}
        modelled = sum(len(t.genes) for t in stored.values())
        assert all(10 <= len(t.genes) <= 40 for t in stored.values())
        # genes x replicates x (lambdas + the lasso and GRNBoost2)
        assert len(genes) == modelled * 1 * (2 + 2) and genes.test_r2.notna().all()
        assert set(genes["lambda"].dropna()) == {0.0, 0.01} and (genes.model == "lasso").sum() == modelled
        assert (genes.model == "grnboost2").sum() == modelled and (genes.trees.dropna() >= 1).all()
        # Trials stopped early still carry their best epoch's results.
        stopped = genes[genes.stopped_early]
        assert (stopped.best_epoch <= stopped.epochs_run).all() and (stopped.epochs_run < 4).all()
        assert (genes.loc[genes["lambda"] == 0, "epochs_run"] == 4).all()  # the baseline runs in full
        assert len(pd.read_csv(tmp_path / "runs/smoke/selected.csv")) == 2 * 4
    assert "| Kidney_Left |" in run.stdout and "gene_r2.parquet" in run.stdout
    # TF rankings of the selected models, the consensus network, and their quality.
    rankings = pd.read_parquet(tmp_path / "runs/smoke/rankings.parquet")
    assert len(rankings) == modelled * 60 and set(rankings["rank"]) == set(range(1, 61))
    assert (tmp_path / "runs/smoke/network.csv").is_file()
    # models/ holds what the results use: per group the selected λ, λ = 0 and the baselines.
    selected = pd.read_csv(tmp_path / "runs/smoke/selected.csv")
    expected = {f"{r['tissue']}_c{r['cluster']}_r{r['replicate']}_{suffix}.npz"
                for r in selected.to_dict("records") for suffix in {f"lambda{r['lambda']:g}", "lambda0", "lasso", "grnboost2"}}
    assert {p.name for p in (tmp_path / "runs/smoke/models").iterdir()} == expected
    # Rankings made during the sweep equal those `mtlrank-ray rank` makes afterwards, and
    # the command prints none of TensorFlow's start-up lines.
    ranked = subprocess.run([shutil.which("mtlrank-ray", path=str(Path(sys.executable).parent)), "rank",
                             str(tmp_path / "runs/smoke"), "-q"], capture_output=True, text=True, timeout=600)
    assert ranked.returncode == 0 and ranked.stdout.startswith("\nTF rankings:"), ranked.stderr[-3000:]
    assert ranked.stderr == "", ranked.stderr
    assert main(["rank", str(tmp_path / "runs/smoke"), "-q"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs/smoke/rankings.parquet"), rankings)
    # Another λ's models are fetched from the sweep's storage when asked for.
    assert main(["rank", str(tmp_path / "runs/smoke"), "--lambda", "0.01", "-q"]) == 0
    assert len(pd.read_parquet(tmp_path / "runs/smoke/rankings_lambda0.01.parquet")) == len(rankings)
    assert len(list((tmp_path / "runs/smoke/models").glob("*_lambda0.01.npz"))) == 8
    assert main(["rank", str(tmp_path / "runs/smoke"), "--lambda", "0.5", "-q"]) == 2
    evaluation = pd.read_csv(tmp_path / "runs/smoke/evaluation.csv").set_index(["tissue", "method", "measure"])
    assert set(evaluation.index.get_level_values("method")) == {"mtlrank (DeepLIFT)", "abs lasso coefficient",
                                                                "GRNBoost2 importance", "abs Pearson"}
    # On estimated velocity the planted regulators are still found above chance (README,
    # "Which target to start with"), well above it in Liver.
    for tissue in ("Kidney_Left", "Liver"):
        assert evaluation.loc[(tissue, "mtlrank (DeepLIFT)", "average precision"), "verdict"] == "above chance"
    ours = evaluation.loc[("Liver", "mtlrank (DeepLIFT)", "average precision")]
    assert ours.low > 3 * ours.chance
    # The planted truth is one reference like any other: evaluate reproduces the table.
    assert main(["evaluate", str(tmp_path / "runs/smoke"), "--reference",
                 str(tmp_path / "demo/truth/regulators.csv"), "-q"]) == 0
    again = pd.read_csv(tmp_path / "runs/smoke/evaluation.csv").set_index(["tissue", "method", "measure"])
    pd.testing.assert_frame_equal(again, evaluation)
    assert genes.groupby("tissue").test_r2.mean().min() > 0.1  # the demo's planted signal is found
    assert all(len(set(t.clusters)) == 4 for t in stored.values())
    # README's trainer example runs against this store.
    monkeypatch.chdir(tmp_path)
    blocks = [block.split("```")[0] for block in (REPO / "README.md").read_text().split("```python\n")[1:]]
    example = next(block for block in blocks if "ClusterTrainer" in block)
    exec(compile(example, "README example", "exec"), {})
