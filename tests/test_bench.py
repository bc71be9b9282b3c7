import re

import pytest

from mtlrank_ray.dev import bench


@pytest.mark.slow
def test_quick_benchmark_prints_every_figure(capsys):
    bench.main(["--quick"])
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert list(lines)[:2] == ["cores", "tensorflow"]
    for name in ("speedup_vs_seed", "step_over_matmul", "first_step_s", "ranking_s_per_gene_replicate",
                 "lasso_s_per_gene_replicate", "grnboost2_s_per_gene", "grnboost2_trees",
                 "step_over_matmul_previous", "gather_over_matmul", "floor_over_matmul", "peak_rss_over_input"):
        assert re.fullmatch(r"\d+(\.\d+)?", lines[name]), (name, lines[name])
        assert float(lines[name]) > 0


def test_the_previous_formulation_is_what_its_figure_times(monkeypatch):
    """The process's training step keeps its trace: `previous_step` must trace its own,
    or step_over_matmul_previous would time the current step again."""
    calls = []
    previous = bench.previous_first_layers
    monkeypatch.setattr(bench, "previous_first_layers", lambda *a: calls.append(1) or previous(*a))
    bench.our_step(16, 2, 1)  # the current formulation, traced first at this shape
    bench.previous_step(16, 2, 1)
    assert calls
