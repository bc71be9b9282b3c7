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
