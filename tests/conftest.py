import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
import yaml

from mtlrank_ray.dev.demo import DemoSpec, write_demo

REPO = Path(__file__).resolve().parents[1]

# Ray's temp dir of the tests' own: a driver joins the cluster whose address file it
# finds there (`ray start` leaves one in /tmp/ray), so a cluster this machine happens
# to run is never the one a test's sweep joins.
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="mtlr-ray-")
atexit.register(shutil.rmtree, os.environ["RAY_TMPDIR"], ignore_errors=True)

# A small atlas and settings that select from it: every test's prepare runs in
# well under a second.
SMALL_SPEC = DemoSpec(seed=7, cells={"Kidney (Left)": 400, "Liver": 250}, n_tfs=24,
                      n_silent_tfs=3, n_genes=40, n_expression_only_genes=6)
SMALL_SETTINGS = {"genes": {"n_genes": 16, "min_cells": 250,  # counts as the notebook's
                            "min_cells_by_tissue": {"Liver": 150}, "min_cell_fraction": 1,
                            "n_clusters": 4, "seed": 1000}}


@pytest.fixture(scope="session")
def small_atlas_template(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("template") / "atlas", SMALL_SPEC)


@pytest.fixture
def atlas(small_atlas_template, tmp_path) -> Path:
    """A private copy of the small atlas that a test may damage."""
    return Path(shutil.copytree(small_atlas_template, tmp_path / "atlas"))


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def small_config(tmp_path) -> Path:
    return write_config(tmp_path / "small.yaml", SMALL_SETTINGS)


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine, 2 CPUs; workers can import the test modules."""
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
