"""Atlas-shaped sweep benchmark: `python -m mtlrank_ray.dev.sweep_bench --atlas`.

One synthetic tissue of atlas shape (20,000 cells x 1,600 TFs, 4 clusters of
25 genes) in a local store; the sweep tune.py runs (λ in {0, 0.01}, one
replicate, 4 epochs, early stopping off so every trial does the same work,
half a CPU per trial: four trials at once on two cores), with the lasso
baselines and rankings beside it (GRNBoost2's cost per gene is `bench`'s
grnboost2_s_per_gene). Printed, measured in this run:

    first_trial_s          from the sweep's start to the first trial's first report
    sweep_s, trials_per_hour  Tuner.fit's wall time, and trials / sweep_s x 3600
    storage_bytes_per_trial   bytes the trials wrote (models and checkpoints), mean;
                           sweep_folder_bytes_per_trial: Tune's folder afterwards, over trials
    before_storage_bytes_per_trial  the previous policy: a whole trainer state (this
                           run's measured size) after every epoch
    peak_rss_*, peak_uss_*  peak resident and private memory of the driver and of each
                           kind of worker (sampled every 0.5 s)
    object_store_peak_bytes  peak growth of /dev/shm, where Ray keeps the object store
    node_bytes_4_trials_*  host memory of four concurrent trials of the tissue (the
                           four workers' private memory plus the object store's share):
                           `shared` reads the node's one copy, `private` gives each
                           worker its own copy as every worker assembled one before

and the projection, with its arithmetic, for the paper's 1,440 trials.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import ray

from ..config import config_from_dict
from ..data.store import AlignedTissue, aligned_empty, publish, write_tissue

CELLS, TFS, CLUSTERS, GENES_PER_CLUSTER, EPOCHS = 20_000, 1_600, 4, 25, 4
PAPER_TRIALS, PAPER_EPOCHS, WORKERS = 1_440, 10, 8
SETTINGS = {"training": {"epochs": EPOCHS}, "asha": {"enabled": False},
            "search": {"lambdas": [0.0, 0.01], "replicates": 1, "baselines": ["lasso"]}, "resources": {"cpu": 0.5}}


def atlas_tissue(seed: int = 0) -> AlignedTissue:
    return synthetic_tissue("Atlas", CELLS, TFS, CLUSTERS, GENES_PER_CLUSTER, seed)


def synthetic_tissue(name: str, cells: int, tfs: int, clusters: int, genes_per_cluster: int,
                     seed: int = 0) -> AlignedTissue:
    """Random expression and activity; velocity a noisy function of a few TFs per gene."""
    rng = np.random.default_rng(seed)
    n_genes = clusters * genes_per_cluster
    expression = rng.random(dtype=np.float32, out=aligned_empty((cells, tfs)))
    weights = np.zeros((tfs, n_genes), np.float32)
    for g in range(n_genes):
        weights[rng.choice(tfs, 3, replace=False), g] = rng.normal(size=3)
    velocity = expression @ weights + rng.normal(scale=0.5, size=(cells, n_genes)).astype(np.float32)
    velocity[rng.random(velocity.shape) < 0.1] = np.nan
    return AlignedTissue(
        name=name, barcodes=np.array([f"cell{i}" for i in range(cells)]),
        tfs=pd.Index([f"TF{t}" for t in range(tfs)]), tf_symbols=np.array([""] * tfs),
        tf_has_activity=np.ones(tfs, bool), genes=pd.Index([f"gene{g}" for g in range(n_genes)]),
        clusters=np.repeat(np.arange(clusters), genes_per_cluster),
        n_cells=np.sum(~np.isnan(velocity), axis=0), expression=expression, target=velocity,
        activity_mean=rng.random((n_genes, tfs), dtype=np.float32),
        activity_sum=rng.random((n_genes, tfs), dtype=np.float32))


class MemorySampler(threading.Thread):
    """Peak RSS and private memory of every Ray worker process, by task name, and the
    peak growth of /dev/shm (the object store), sampled until stopped."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.done = period, threading.Event()
        self.peaks: dict[int, dict] = {}
        self.shm_start = shutil.disk_usage("/dev/shm").used
        self.shm_peak = 0

    def run(self) -> None:
        while not self.done.wait(self.period):
            self.shm_peak = max(self.shm_peak, shutil.disk_usage("/dev/shm").used - self.shm_start)
            for process in psutil.process_iter(["pid", "name", "cmdline"]):
                name = (process.info["cmdline"] or [""])[0]
                if not name.startswith("ray::"):
                    continue
                try:
                    memory = process.memory_full_info()
                except psutil.Error:
                    continue
                kind = name.removeprefix("ray::").split(".")[-1].split()[0]
                peak = self.peaks.setdefault(process.info["pid"], {"kind": kind, "rss": 0, "uss": 0})
                if kind not in ("IDLE",):
                    peak["kind"] = kind
                peak["rss"], peak["uss"] = max(peak["rss"], memory.rss), max(peak["uss"], memory.uss)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        kinds: dict[str, tuple[int, int]] = {}
        for peak in self.peaks.values():
            rss, uss = kinds.get(peak["kind"], (0, 0))
            kinds[peak["kind"]] = (max(rss, peak["rss"]), max(uss, peak["uss"]))
        return kinds


@ray.remote(num_cpus=0.5)
def _four_trials_worker(tissue, cluster: int, private: bool, start: float) -> int:
    """Build one trial's trainer on the tissue, train one epoch; returns this worker's
    private memory. `private`: on its own copy of the expression, as before."""
    from ..config import SearchConfig, TrainingConfig
    from ..core.cluster_data import replicate_split
    from ..core.trainer import ClusterTrainer, Trial
    from ..distributed import ray_data

    data = ray_data.cluster_data(tissue, cluster)
    if private:
        copy = aligned_empty(data.expression.shape)
        copy[...] = data.expression
        data.expression = copy
    split = replicate_split(SearchConfig(), len(data.expression), 0)
    trainer = ClusterTrainer(data, Trial("Atlas", cluster, 0, 0.0), TrainingConfig(), split, 0)
    while time.time() < start:  # all four hold their trainers at once
        time.sleep(0.05)
    trainer.fit(1)
    return psutil.Process().memory_full_info().uss


def four_trials_bytes(tissue, private: bool) -> int:
    shm = shutil.disk_usage("/dev/shm").used
    start = time.time() + 20
    uss = ray.get([_four_trials_worker.remote(tissue, c, private, start) for c in range(CLUSTERS)])
    return sum(uss) + max(0, shutil.disk_usage("/dev/shm").used - shm) + tissue_bytes()


def tissue_bytes() -> int:
    return CELLS * TFS * 4


def state_bytes(tissue) -> tuple[int, int]:
    """(a trainer state's bytes, a model's bytes) at this tissue's sizes, measured."""
    from ..config import SearchConfig, TrainingConfig
    from ..core.cluster_data import replicate_split
    from ..core.trainer import ClusterTrainer, Trial
    from ..distributed import ray_data

    data = ray_data.cluster_data(tissue, 0)
    trainer = ClusterTrainer(data, Trial("Atlas", 0, 0, 0.0), TrainingConfig(),
                             replicate_split(SearchConfig(), CELLS, 0), 0)
    with tempfile.TemporaryDirectory() as folder:
        trainer.save(Path(folder) / "state.npz")
        return (Path(folder) / "state.npz").stat().st_size, len(trainer.best_model())


def main() -> None:
    from ..distributed import ray_data
    from ..distributed.group_tasks import GroupsFinished, GroupTasks
    from ..distributed.search_space import trials_per_group
    from ..distributed.tuner import groups, run_sweep
    from ..run_storage import experiment_path
    from .bench import memory_bytes

    cpus = os.cpu_count()
    print(f"cores: {cpus}")
    print(f"tissue: {CELLS} cells x {TFS} TFs, {CLUSTERS} clusters of {GENES_PER_CLUSTER} genes; "
          f"{EPOCHS} epochs, λ in {{0, 0.01}}, 1 replicate, 0.5 CPU per trial")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "store").mkdir()
        write_tissue(root / "staging", atlas_tissue(), {})
        publish(root / "staging", root / "store", "Atlas")
        config = config_from_dict(SETTINGS)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        sampler = MemorySampler()
        sampler.start()
        try:
            started = time.time()
            blocks = {"Atlas": ray_data.materialize_tissue(str(root / "store"), "Atlas", 0.5)}
            print(f"materialize_s: {time.time() - started:.1f}")
            experiment = experiment_path(config, root / "run")
            tasks = GroupTasks(blocks, config, experiment)
            tasks.add_baselines(groups(list(blocks.values()), config))
            GroupsFinished.tasks = tasks
            swept = time.time()
            grid = run_sweep(blocks, config, root / "run", verbose=0, callbacks=(GroupsFinished(trials_per_group(config.search)),))
            sweep_s = time.time() - swept
            GroupsFinished.tasks = None
            tasks.finish()
            side_s = time.time() - swept - sweep_s
            sampler.done.set()
            sampler.join()
            reports = pd.concat([r.metrics_dataframe for r in grid])
            first = reports.timestamp.min() - swept
            written = np.mean([r.metrics["storage_bytes"] for r in grid])
            folder_bytes = sum(p.stat().st_size for p in Path(experiment).rglob("*") if p.is_file())
            state, model = state_bytes(blocks["Atlas"])
            n = len(grid)
            print(f"trials: {n}; baselines: {tasks.baseline_counts()}; rankings: {len(tasks.rankings)}; "
                  f"failed: {len(tasks.failed) + sum(r.error is not None for r in grid)}")
            print(f"first_trial_s: {first:.1f}  (whole seconds: Tune's report timestamps)")
            print(f"sweep_s: {sweep_s:.1f}")
            print(f"baselines_and_rankings_after_sweep_s: {side_s:.1f}")
            print(f"trials_per_hour: {n / sweep_s * 3600:.0f}")
            print(f"trial_state_bytes: {state}; model_bytes: {model}")
            print(f"storage_bytes_per_trial: {written:.0f}")
            print(f"sweep_folder_bytes_per_trial: {folder_bytes / n:.0f}")
            before = EPOCHS * state
            print(f"before_storage_bytes_per_trial: {before}  ({EPOCHS} epochs x one state)")
            print(f"storage_ratio_before_over_after: {before / written:.1f}")
            print(f"peak_rss_driver: {memory_bytes('VmHWM')}")
            for kind, (rss, uss) in sorted(sampler.by_kind().items()):
                print(f"peak_rss_{kind}: {rss}; peak_uss_{kind}: {uss}")
            print(f"object_store_peak_bytes: {sampler.shm_peak}  (expression matrix alone: "
                  f"{tissue_bytes()})")
            shared = four_trials_bytes(blocks["Atlas"], private=False)
            private = four_trials_bytes(blocks["Atlas"], private=True)
            print(f"node_bytes_4_trials_shared: {shared}")
            print(f"node_bytes_4_trials_private: {private}")
            print(f"node_memory_ratio_private_over_shared: {private / shared:.2f}")
            project(n, sweep_s, written, state, model, cpus)
        finally:
            sampler.done.set()
            ray.shutdown()


def project(trials: int, sweep_s: float, written: float, state: int, model: int, cpus: int) -> None:
    """The paper's sweep from this run's figures; every assumption is printed as one."""
    from ..distributed.asha import rungs

    print("\nprojection: 1,440 trials (6 tissues x 20 clusters x 3 replicates x 4 λ), 10 epochs, "
          "T = 1,600, G = 25, on 8 g5.xlarge (1 A10G, 4 vCPU each), tune_configs/gpu.yaml")
    ends = len(set(rungs(2, 2, PAPER_EPOCHS)) | {PAPER_EPOCHS})
    before = PAPER_TRIALS * PAPER_EPOCHS * state
    after = PAPER_TRIALS * ends * model
    print(f"  per trial, 10 epochs: before {PAPER_EPOCHS * state / 1e6:.0f} MB (a state every epoch); "
          f"after at most {ends * model / 1e6:.0f} MB (a model at each possible end) when it "
          f"runs under 300 s: ratio {PAPER_EPOCHS * state / (ends * model):.0f}x")
    print(f"  storage before: {PAPER_TRIALS} x {PAPER_EPOCHS} epochs x {state / 1e6:.1f} MB state "
          f"= {before / 1e9:.0f} GB")
    print(f"  storage after, at most: {PAPER_TRIALS} x {ends} possible ends (rungs 2, 4, 8 and 10) x "
          f"{model / 1e6:.1f} MB model = {after / 1e9:.1f} GB, plus one state per trial every "
          f"run.checkpoint_every_s (300 s) it runs")
    per_trial_here = sweep_s * cpus / 0.5 / trials  # one trial's seconds on half a CPU here
    epoch_here = per_trial_here / EPOCHS
    print(f"  measured here: {per_trial_here:.0f} s per trial on half a core, {epoch_here:.1f} s "
          f"per epoch at {CELLS} cells")
    step_flops = 3 * 2 * GENES_PER_CLUSTER * 256 * TFS * 64  # the three (G, B, T) x (G, T, 64) products
    steps = 0.81 * 50_000 / 256  # training cells of the largest tissue, per batch
    a10g_flops = 31.2e12 * 0.25  # assumption: a quarter of the A10G's fp32 peak
    gpu_epoch = steps * step_flops / a10g_flops * 4  # four trials share a GPU
    gpu_trial = PAPER_EPOCHS * (gpu_epoch + 1.0)  # assumption: 1 s per epoch of evaluation and reports
    total = PAPER_TRIALS * gpu_trial / (WORKERS * 4)
    print(f"  GPU epoch, assumed compute-bound at 25% of 31.2 TFLOP/s, 4 trials per GPU: "
          f"{steps:.0f} steps x {step_flops / 1e9:.1f} GFLOP / {a10g_flops / 1e12:.1f} TFLOP/s x 4 "
          f"= {gpu_epoch:.1f} s (+1 s evaluation and reporting, assumed)")
    print(f"  sweep: {PAPER_TRIALS} trials x {gpu_trial:.0f} s / ({WORKERS} workers x 4 trials) = "
          f"{total / 60:.0f} min of trials; storage written at an assumed 100 MB/s per node: "
          f"{after / (WORKERS * 100e6) / 60:.1f} min (before: {before / (WORKERS * 100e6) / 60:.0f} min)")
