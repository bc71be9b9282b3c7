import shutil
import subprocess
import sys

import pytest

from mtlrank_ray.cli import main
from mtlrank_ray.data import load_tissue

from conftest import REPO


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


@pytest.mark.slow
def test_tune_py_demo_from_a_fresh_folder(tmp_path):
    """README's quick start: `python tune.py --demo` writes the demo and prepares it."""
    shutil.copy(REPO / "tune.py", tmp_path)
    shutil.copytree(REPO / "tune_configs", tmp_path / "tune_configs")
    run = subprocess.run([sys.executable, "tune.py", "--demo"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "aligned store: runs/smoke/store" in run.stdout
    tissue = load_tissue(tmp_path / "runs/smoke/store", "Kidney_Left")
    assert len(tissue.genes) == 40 and len(set(tissue.clusters)) == 4
    again = subprocess.run([sys.executable, "tune.py", "--demo"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reused") == 2
