"""`mtlrank_ray.tune` in a notebook, run as Jupyter runs it: a real IPython kernel
(ipykernel) driven by nbclient, the client `jupyter nbconvert --execute` uses. The
kernel's outputs are what the notebook's page would show."""

import shutil

import pytest
from conftest import SMALL_SETTINGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow
def test_a_notebook_shows_the_phases_and_the_sweeps_bar(small_atlas_template, tmp_path):
    data = shutil.copytree(small_atlas_template, tmp_path / "atlas")
    config = {**SMALL_SETTINGS, "training": {"epochs": 2, "batch_size": 64},
              "search": {"lambdas": [0.0, 0.01], "replicates": 1}}
    code = ("import mtlrank_ray\n"
            f"results = mtlrank_ray.tune({str(data)!r}, config={config!r}, out='runs/nb')\n"
            "len(results.selected)")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[0].outputs
    assert [o for o in outputs if o.output_type == "error"] == []
    assert outputs[-1].data["text/plain"] == "8"  # 2 tissues x 4 clusters
    printed = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "data: 2 tissues in Ray's object store" in printed
    assert "baselines and rankings:" in printed
    assert "sweep: " not in printed  # a bar, not the plain lines a log file gets
    # tqdm's notebook bar: a widget whose final state is every trial done.
    assert any(WIDGET in o.get("data", {}) for o in outputs if o.output_type == "display_data")
    states = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [w["state"] for w in states.values() if w["model_name"] == "FloatProgressModel"]
    # The sweep's (2 tissues x 4 clusters x 2 λ), and the baselines' and rankings' still to
    # do after it, if any were: each bar ends full.
    pairs = [(bar["value"], bar["max"]) for bar in bars]
    assert pairs[0] == (16, 16) and len(pairs) <= 2 and all(v == m for v, m in pairs), pairs
