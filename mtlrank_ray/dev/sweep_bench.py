"""Sweep benchmark: `python -m mtlrank_ray.dev.sweep_bench`.

On a demo atlas (12,000 and 6,000 cells, 100 TFs; clusters of 10 genes, 20
epochs, early stopping off so every trial does the same work) it runs the
sweep with 8 trials, then 16 (twice the replicates), on this machine's CPUs
with one CPU per trial, and prints for each, measured in this run:

    wall_s                 Tuner.fit's wall time (the blocks are materialized before)
    sum_trial_s            the trials' own times (Tune's time_total_s: from the
                           trainable's start to its last report)
    mean_trial_s           sum_trial_s / trials
    parallel_efficiency    sum_trial_s / (wall_s x concurrent trials)
    overhead_per_trial_s   (wall_s x concurrent trials - sum_trial_s) / trials

`--atlas` runs the atlas-shaped benchmark instead (`mtlrank_ray.dev.atlas_bench`);
`--many N` runs N short trials on the local cluster with S3 storage
(`mtlrank_ray.dev.many_trials`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import ray

from ..config import config_from_dict
from ..data import prepare_store
from ..distributed.ray_data import materialize_tissue
from ..distributed.tuner import run_sweep
from .demo import DemoSpec, write_demo

SPEC = DemoSpec(cells={"Kidney (Left)": 12000, "Liver": 6000}, n_tfs=100)


def settings(replicates: int) -> dict:
    return {"genes": {"n_genes": 20, "min_cells": 3000, "min_cells_by_tissue": {"Liver": 1500},
                      "n_clusters": 2, "seed": 1000},
            "training": {"epochs": 20},
            "search": {"lambdas": [0.0, 0.01], "replicates": replicates},
            "asha": {"enabled": False}, "resources": {"cpu": 1}}


def main() -> None:
    if "--atlas" in sys.argv[1:]:
        from .atlas_bench import main as atlas
        atlas()
        return
    if "--many" in sys.argv[1:]:
        from .many_trials import main as many
        many(int(sys.argv[sys.argv.index("--many") + 1]))
        return
    cpus = os.cpu_count()
    print(f"cores: {cpus}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_demo(root / "demo", SPEC)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        try:
            for replicates in (1, 2):
                config = config_from_dict(settings(replicates))
                reports = prepare_store(root / "demo", config, root / "store")
                started = time.perf_counter()
                blocks = {r.tissue: materialize_tissue(str(root / "store"), r.tissue) for r in reports}
                materialize = time.perf_counter() - started
                started = time.perf_counter()
                grid = run_sweep(blocks, config, root / f"run{replicates}")
                wall = time.perf_counter() - started
                own = sum(result.metrics["time_total_s"] for result in grid)
                n, slots = len(grid), min(cpus, len(grid))
                tag = f"trials_{n}"
                print(f"{tag}_materialize_s: {materialize:.1f}")
                print(f"{tag}_wall_s: {wall:.1f}")
                print(f"{tag}_sum_trial_s: {own:.1f}")
                print(f"{tag}_mean_trial_s: {own / n:.1f}")
                print(f"{tag}_parallel_efficiency: {own / (wall * slots):.2f}")
                print(f"{tag}_overhead_per_trial_s: {(wall * slots - own) / n:.2f}")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
