"""Many-trials benchmark: `python -m mtlrank_ray.dev.sweep_bench --many N`.

N short trials (clusters of 2 genes, 400 cells x 24 TFs, 3 epochs with grouped
ASHA from epoch 1, so trials run 1 to 3 epochs; 4 λ x 5 replicates per
cluster) through the sweep tune.py runs (the trainable, grouped ASHA, group
completion, the lasso and the rankings beside the trials), on the local
cluster (`local_cluster`: a head without CPUs, 2 worker nodes of 1 CPU, one
trial each) with the store and Tune's trials on its S3 server. The driver is
this process. Printed, measured in this run, one `name: value` a line:

    wall_s, sum_trial_s     Tuner.fit's wall time; the trials' own times (time_total_s)
    slots                   trials that run at once
    wall_over_ideal         wall_s / (sum_trial_s / slots)
    driver_peak_rss_mb      the driver's peak resident memory (VmHWM)
    driver_rss_growth_mb_per_1000_trials  the slope of the driver's resident memory
                            against finished trials, over the sweep's second half
    snapshot_s_max, snapshot_s_mean  Tune's experiment-state saves, each from the
                            save's start to its upload's end (the upload runs beside the
                            driver's loop; a save does not start while one uploads)
    storage_objects_per_trial, storage_bytes_per_trial  the run's objects on S3 afterwards

then, as the floor for trials this short, Tune alone on the same cluster: as many
trials, each sleeping the sweep's mean trial time over 3 reports, FIFO, no
checkpoints, Tune's folder on this machine's disk (`tune_alone_*`: wall_s,
wall_over_ideal, overhead_per_trial_s), and the projection to 9,600 trials, with
its arithmetic.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune import Callback

from ..config import config_from_dict
from ..data.store import filesystem, publish, write_tissue
from .atlas_bench import synthetic_tissue

LAMBDAS, REPLICATES, GENES_PER_CLUSTER, EPOCHS = [0.0, 0.001, 0.01, 0.1], 5, 2, 3
PAPER_TRIALS = 9_600


class Finished(Callback):
    """Counts finished trials, for the memory samples."""

    count = 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        Finished.count += 1

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        Finished.count += 1


class Snapshots:
    """Times Tune's experiment-state saves in this driver: from a save's start to the end
    of the upload it launched (Tune's `_ExperimentCheckpointManager` and its syncer)."""

    def __init__(self):
        from ray.train._internal.storage import _FilesystemSyncer
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

        self.durations: list[tuple[int, float]] = []  # (finished trials, seconds)
        self.saves: list[float] = []  # the synchronous part: writing the state files
        self._started: float | None = None
        manager, syncer = _ExperimentCheckpointManager, _FilesystemSyncer
        save, command = manager.sync_up_experiment_state, syncer._sync_up_command
        snapshots = self

        def timed_save(manager_self, save_fn, force=False, wait=False):
            def timed_save_fn():
                snapshots._started = time.monotonic()
                save_fn()
                snapshots.saves.append(time.monotonic() - snapshots._started)
            return save(manager_self, timed_save_fn, force=force, wait=wait)

        def timed_command(syncer_self, local_path, uri, exclude=None):
            upload, kwargs = command(syncer_self, local_path, uri, exclude)
            started = snapshots._started

            def timed_upload(**arguments):
                upload(**arguments)
                if started is not None:
                    snapshots.durations.append((Finished.count, time.monotonic() - started))
            return timed_upload, kwargs

        manager.sync_up_experiment_state, syncer._sync_up_command = timed_save, timed_command


class MemoryCurve(threading.Thread):
    """(finished trials, this process's resident MB), every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[int, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        process = psutil.Process()
        while not self.done.wait(1.0):
            self.samples.append((Finished.count, process.memory_info().rss / 2**20))


def storage_totals(root: str) -> tuple[int, int]:
    fs, path = filesystem(root)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if i.type == pafs.FileType.File]
    return len(infos), sum(i.size for i in infos)


def slope_per_1000(samples: list[tuple[int, float]]) -> float:
    """MB per 1,000 finished trials, fitted over the second half of the sweep."""
    points = np.array(samples, dtype=float)
    half = points[points[:, 0] >= points[-1, 0] / 2]
    if len(np.unique(half[:, 0])) < 2:
        return float("nan")
    return float(np.polyfit(half[:, 0], half[:, 1], 1)[0] * 1000)


def main(n_trials: int) -> None:
    """Start the local cluster, then run the driver in a process of its own that holds the
    cluster's variables from its start (Ray reads its token settings when it loads)."""
    from ..distributed.local_cluster import LocalCluster

    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(Path(folder) / "cluster", workers=2, cpus_per_worker=1).start()
        try:
            subprocess.run([sys.executable, "-m", "mtlrank_ray.dev.many_trials", cluster.address,
                            cluster.storage("many"), str(n_trials), folder],
                           env={**os.environ, **cluster.env()}, check=True)
        finally:
            cluster.stop()


def drive(address: str, storage: str, n_trials: int, folder: Path) -> None:
    from ..distributed.group_tasks import GroupsFinished, GroupTasks
    from ..distributed.ray_data import materialize_tissue
    from ..distributed.search_space import trials_per_group
    from ..distributed.tuner import groups, run_sweep
    from ..run_storage import experiment_path
    from .bench import memory_bytes

    clusters = math.ceil(n_trials / (len(LAMBDAS) * REPLICATES))
    config = config_from_dict({
        "training": {"epochs": EPOCHS, "batch_size": 64},
        "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
        "search": {"lambdas": LAMBDAS, "replicates": REPLICATES, "baselines": ["lasso"]},
        "resources": {"cpu": 1, "gpu": 0.5, "require_gpu": False},
        "run": {"storage_path": storage}})
    out = folder / "run"
    write_tissue(folder / "staging", synthetic_tissue("Many", 400, 24, clusters, GENES_PER_CLUSTER), {})
    publish(folder / "staging", config.run.store(out), "Many")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # as tune.py: Ray Data keeps its own at INFO
    try:
        blocks = {"Many": materialize_tissue(config.run.store(out), "Many", config.resources.cpu)}
        every_group = groups(list(blocks.values()), config)
        n = len(every_group) * trials_per_group(config.search)
        slots = int(ray.cluster_resources()["CPU"] // config.resources.cpu)
        print(f"trials: {n} ({clusters} clusters of {GENES_PER_CLUSTER} genes x {REPLICATES} "
              f"replicates x {len(LAMBDAS)} λ, {EPOCHS} epochs, grouped ASHA from epoch 1); "
              f"slots: {slots}; storage: {config.run.root(out)}", flush=True)
        tasks = GroupTasks(blocks, config, experiment_path(config, out))
        tasks.add_baselines(every_group)
        snapshots, memory = Snapshots(), MemoryCurve()
        GroupsFinished.tasks = tasks
        memory.start()
        started = time.monotonic()
        grid = run_sweep(blocks, config, out, verbose=0,
                         callbacks=(GroupsFinished(trials_per_group(config.search)), Finished()))
        wall = time.monotonic() - started
        GroupsFinished.tasks = None
        memory.done.set()
        tasks.finish()
        own = sum(r.metrics.get("time_total_s", 0.0) for r in grid if r.metrics)
        objects, size = storage_totals(config.run.root(out))
        durations = [d for _, d in snapshots.durations] or [float("nan")]
        print(f"snapshot_save_s_mean: {np.mean(snapshots.saves or [float('nan')]):.2f}  "
              "(writing the state files, before the upload)")
        report(n, wall, own, slots, memory.samples, memory_bytes("VmHWM") / 2**20,
               snapshots.durations, durations, objects, size,
               failed=sum(r.error is not None for r in grid) + len(tasks.failed))
        alone_wall, alone_own = tune_alone(n, own / n, folder)
        print(f"tune_alone_wall_s: {alone_wall:.1f}  ({n} trials of {own / n:.2f} s: sleeping, FIFO, "
              "no checkpoints, local disk)")
        print(f"tune_alone_wall_over_ideal: {alone_wall / (alone_own / slots):.2f}")
        print(f"tune_alone_overhead_per_trial_s: {(alone_wall - alone_own / slots) * slots / n:.2f}")
    finally:
        ray.shutdown()


def tune_alone(n: int, trial_s: float, folder: Path) -> tuple[float, float]:
    """Tune's own cost for trials this short: n trials that each sleep `trial_s` over EPOCHS
    reports, on one CPU each, FIFO, no checkpoints, with Tune's folder on this machine's
    disk; (wall time, the trials' own times)."""
    def sleeper(config: dict) -> None:
        for epoch in range(1, EPOCHS + 1):
            time.sleep(trial_s / EPOCHS)
            tune.report({"epoch": epoch})

    started = time.monotonic()
    grid = tune.Tuner(tune.with_resources(sleeper, {"cpu": 1}),
                      param_space={"trial": tune.grid_search(list(range(n)))},
                      tune_config=tune.TuneConfig(reuse_actors=True),
                      run_config=tune.RunConfig(name="alone", storage_path=str(folder / "alone"),
                                                verbose=0)).fit()
    wall = time.monotonic() - started
    return wall, sum(r.metrics.get("time_total_s", 0.0) for r in grid if r.metrics)


def report(n, wall, own, slots, samples, peak_mb, snapshots, durations, objects, size, failed) -> None:
    ideal = own / slots
    growth = slope_per_1000(samples)
    print(f"failed: {failed}")
    print(f"wall_s: {wall:.1f}")
    print(f"sum_trial_s: {own:.1f}")
    print(f"mean_trial_s: {own / n:.2f}")
    print(f"slots: {slots}")
    print(f"wall_over_ideal: {wall / ideal:.2f}")
    print(f"overhead_per_trial_s: {(wall - ideal) * slots / n:.2f}  ((wall_s - ideal) x slots / trials)")
    print(f"driver_peak_rss_mb: {peak_mb:.0f}")
    print(f"driver_rss_growth_mb_per_1000_trials: {growth:.1f}")
    print(f"snapshots: {len(snapshots)}")
    print(f"snapshot_s_max: {max(durations):.2f}")
    print(f"snapshot_s_mean: {np.mean(durations):.2f}")
    late = [d for done, d in snapshots if done >= n / 2] or [float("nan")]
    print(f"snapshot_s_mean_second_half: {np.mean(late):.2f}")
    print(f"storage_objects_per_trial: {objects / n:.1f}")
    print(f"storage_bytes_per_trial: {size / n:.0f}")
    print(f"\nprojection: {PAPER_TRIALS} trials, from this run's figures")
    per_trial = wall / n
    print(f"  wall, at this run's {per_trial:.2f} s per trial with {slots} slots: "
          f"{PAPER_TRIALS} x {per_trial:.2f} = {PAPER_TRIALS * per_trial / 3600:.1f} h "
          "(trials as short as these; real trials are longer, and the overhead per trial counts less)")
    if math.isfinite(growth) and growth > 0:
        print(f"  driver memory: {peak_mb:.0f} MB + ({PAPER_TRIALS} - {n}) / 1000 x {growth:.1f} MB = "
              f"{peak_mb + (PAPER_TRIALS - n) / 1000 * growth:.0f} MB")
    elif math.isfinite(growth):
        print(f"  driver memory: the peak, {peak_mb:.0f} MB (no growth over the second half)")
    if len(snapshots) >= 4:
        done, seconds = np.array(snapshots, dtype=float).T
        per_trial_s, base = np.polyfit(done, seconds, 1)
        print(f"  snapshot: {base:.2f} s + {per_trial_s * 1000:.3f} s per 1000 finished trials "
              f"(fitted) -> {base + per_trial_s * PAPER_TRIALS:.2f} s at {PAPER_TRIALS}")
    print(f"  storage: {PAPER_TRIALS} x {objects / n:.1f} objects = {PAPER_TRIALS * objects / n:,.0f} "
          f"objects, {PAPER_TRIALS * size / n / 1e9:.2f} GB (models grow with genes and TFs: "
          "an atlas trial's model is ~1,000x these)")


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
