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

`--asha` runs, with early stopping on (4 λ per group, 32 trials), the sweep
with grouped ASHA's decisions once per group and rung (the sweep's) and with
decisions as each trial reaches a rung (ASHA's asynchronous rule, the sweep's
before), and prints each one's wall time, epochs trained and trials stopped,
and the ratio of the wall times, for two shapes: `short`, the atlas above with
20 epochs of a tenth of a second (rungs at 2, 4, 8, 16), where a pause's fixed
cost weighs most, and `default_epochs`, one tissue of 30,000 cells and 300 TFs
with the default schedule (10 epochs, rungs at 2, 4, 8), whose epochs are
closer to an atlas's.

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

import numpy as np
import ray
from ray.tune.schedulers import TrialScheduler

from ..config import config_from_dict
from ..data import prepare_store
from ..distributed import tuner
from ..distributed.asha import GroupedASHA
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


class ArrivalOrderASHA(GroupedASHA):
    """ASHA's asynchronous rule within groups, for comparison: each trial decided as it
    reaches a rung, against the values recorded there before it; never paused."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        done = result.get(self._time_attr)
        if done is None or done < self._milestones[0]:
            return TrialScheduler.CONTINUE
        if done >= self._max_t:
            return TrialScheduler.STOP
        rung = max(m for m in self._milestones if m <= done)
        key, group = (trial.trial_id, rung), self._group_of(trial.config)
        if key not in self._decisions:
            value = result.get(self._metric)
            earlier = list(self._recorded[group, rung].values())
            cutoff = np.percentile(earlier, (1 - 1 / self._rf) * 100) if earlier else -np.inf
            self._decisions[key] = TrialScheduler.CONTINUE
            if value is None or not np.isfinite(value) or (
                    value < cutoff and not self._never_stop(trial.config)):
                self._decisions[key] = TrialScheduler.STOP
            if value is not None and np.isfinite(value):
                self._recorded[group, rung][trial.trial_id] = float(value)
        return self._decisions[key]


ASHA_SHAPES = {
    # name: (atlas, settings beside `settings(2)`'s)
    "short": (SPEC, {"search": {"lambdas": [0.0, 0.001, 0.01, 0.1], "replicates": 2},
                     "asha": {"enabled": True, "grace_period": 2, "reduction_factor": 2}}),
    "default_epochs": (DemoSpec(cells={"Kidney (Left)": 30000}, n_tfs=300),
                       {"genes": {"n_genes": 20, "min_cells": 3000, "n_clusters": 2, "seed": 1000},
                        "training": {"epochs": 10},
                        "search": {"lambdas": [0.0, 0.001, 0.01, 0.1], "replicates": 4},
                        "asha": {"enabled": True, "grace_period": 2, "reduction_factor": 2}}),
}


def compare_asha(root: Path) -> None:
    """The sweep with each scheduler on one store per shape, in this run (the module's
    docstring)."""
    for shape, (spec, changes) in ASHA_SHAPES.items():
        write_demo(root / shape, spec)
        config = config_from_dict({**settings(2), **changes})
        reports = prepare_store(root / shape, config, root / f"store_{shape}")
        blocks = {r.tissue: materialize_tissue(str(root / f"store_{shape}"), r.tissue) for r in reports}
        walls = {}
        for name, scheduler in (("per_group", GroupedASHA), ("arrival_order", ArrivalOrderASHA)):
            tuner.GroupedASHA = scheduler  # what run_sweep builds
            try:
                started = time.perf_counter()
                grid = run_sweep(blocks, config, root / f"run_{shape}_{name}", verbose=0)
                walls[name] = time.perf_counter() - started
            finally:
                tuner.GroupedASHA = GroupedASHA
            epochs = sum(result.metrics["epoch"] for result in grid)
            stopped = sum(result.metrics["epoch"] < config.training.epochs for result in grid)
            tag = f"asha_{shape}_{name}"
            print(f"{tag}_wall_s: {walls[name]:.1f}")
            print(f"{tag}_mean_trial_s: {sum(r.metrics['time_total_s'] for r in grid) / len(grid):.1f}")
            print(f"{tag}_epochs_trained: {epochs} of {len(grid) * config.training.epochs}")
            print(f"{tag}_trials_stopped: {stopped} of {len(grid)}")
        print(f"asha_{shape}_per_group_over_arrival_order_wall: "
              f"{walls['per_group'] / walls['arrival_order']:.3f}")


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
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        try:
            if "--asha" in sys.argv[1:]:
                compare_asha(root)
                return
            write_demo(root / "demo", SPEC)
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
