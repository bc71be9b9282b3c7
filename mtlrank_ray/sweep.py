"""The Ray Tune sweep: one trial per (tissue, cluster, replicate, λ).

A trial is a plain function of its config (Ray's function API): it assembles
its cluster from the tissue's blocks, trains with `ClusterTrainer`, and after
every epoch reports (`ray.tune.report`) the epoch's mean validation R², the
training loss and steps/s, plus the best epoch so far with its genes'
validation and test R², with a checkpoint of the trainer's state. Grouped
ASHA stops weak λ within each (tissue, cluster, replicate); the last report
of a stopped trial still holds its best epoch's results.

The lasso baseline runs as one Ray task per (tissue, cluster, replicate) on the
same blocks and splits.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.util.metrics import Gauge
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import ray_data
from .asha import GroupedASHA
from .baseline import LassoFit, fit_lasso, lasso_name
from .cluster_data import replicate_split
from .config import Config, SearchConfig
from .data.store import filesystem, install, sibling
from .errors import InputError
from .trainer import ClusterTrainer, EpochReport, Trial, configure_runtime, load_best_weights

EXPERIMENT = "sweep"
STATE = "trainer_state.npz"
METRIC = "mean_val_r2"

log = logging.getLogger(__name__)


def groups(tissues: list[ray_data.TissueBlocks], config: Config) -> list[dict]:
    """Every (tissue, cluster, replicate): the λ values of one group compete, and each
    group gets one lasso baseline."""
    return [{"tissue": tissue.name, "cluster": cluster, "replicate": replicate}
            for tissue in tissues for cluster in ray_data.tissue_clusters(tissue)
            for replicate in range(config.search.replicates)]


def trial_grid(tissues: list[ray_data.TissueBlocks], config: Config) -> list[dict]:
    return [{**group, "lam": lam} for group in groups(tissues, config)
            for lam in config.search.lambdas]


def group_of(config: dict) -> tuple:
    """The trials that compete: the λ values of one (tissue, cluster, replicate)."""
    trial = config["trial"]
    return trial["tissue"], trial["cluster"], trial["replicate"]


def trial_name(trial) -> str:
    return Trial(**trial.config["trial"]).name


def train_trial(config: dict, tissues: dict[str, ray_data.TissueBlocks], settings: dict) -> None:
    """The trainable: train one (tissue, cluster, replicate, λ), reporting every epoch."""
    configure_runtime(settings["cpu"])
    spec = Trial(**config["trial"])
    training, search = settings["training"], settings["search"]
    data = ray_data.cluster_data(tissues[spec.tissue], spec.cluster)
    split = replicate_split(search, len(data.expression), spec.replicate)
    trainer = ClusterTrainer(data, spec, training, split, search.seed)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.restore(Path(folder) / STATE)

    node = ray.get_runtime_context().get_node_id()

    def report(epoch: EpochReport) -> None:
        record_metrics(spec, epoch)
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(Path(folder) / STATE)
            tune.report({**_metrics(epoch, data.genes), "node": node},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    trainer.fit(training.epochs, on_epoch=report)


@functools.lru_cache(maxsize=1)
def _gauges() -> dict[str, Gauge]:
    """This worker's gauges, exported on the node's Prometheus endpoint (and so in the
    dashboard's metrics views) as ray_mtlrank_*."""
    tags = ("tissue", "cluster", "replicate", "lam")
    return {"val_r2": Gauge("mtlrank_val_r2", "mean validation R^2 of the trial's last epoch", tags),
            "epochs": Gauge("mtlrank_epochs", "epochs the trial has finished", tags),
            "steps_per_s": Gauge("mtlrank_steps_per_s", "training steps per second", tags)}


def record_metrics(trial: Trial, epoch: EpochReport) -> None:
    tags = {"tissue": trial.tissue, "cluster": str(trial.cluster),
            "replicate": str(trial.replicate), "lam": f"{trial.lam:g}"}
    gauges = _gauges()
    gauges["val_r2"].set(epoch.mean_val_r2, tags)
    gauges["epochs"].set(epoch.epoch, tags)
    gauges["steps_per_s"].set(epoch.steps_per_s, tags)


def _metrics(epoch: EpochReport, genes: list[str]) -> dict:
    return {"epoch": epoch.epoch, METRIC: epoch.mean_val_r2, "train_loss": epoch.train_loss,
            "steps_per_s": epoch.steps_per_s, "best_epoch": epoch.best_epoch,
            "best_mean_val_r2": float(epoch.best_val_r2.mean()),
            "best_mean_test_r2": float(epoch.best_test_r2.mean()),
            "genes": list(genes), "best_val_r2": epoch.best_val_r2.tolist(),
            "best_test_r2": epoch.best_test_r2.tolist()}


class _TensorBoardNumbers(TBXLoggerCallback):
    """Tune's TensorBoard logs without the reported gene names, which are not a
    number TensorBoard can plot (Tune would warn of an invalid value)."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "genes"})


def experiment_path(config: Config, out: Path) -> str:
    """Where Tune keeps the sweep: EXPERIMENT/ in the run's root (config.run.root)."""
    return f"{config.run.root(out)}/{EXPERIMENT}"


def resumable(config: Config, out: Path) -> str:
    """The interrupted sweep's path, or an error saying there is none."""
    path = experiment_path(config, out)
    if not tune.Tuner.can_restore(path):
        raise InputError(f"there is no sweep to resume at {path}; run without --resume")
    return path


def restore_missing_checkpoints(path: str) -> int:
    """Make every trial of the sweep at `path` restorable; returns how many were mended.

    Tune deletes a trial's superseded checkpoint as soon as the next one is
    registered, before the next experiment snapshot stops naming it: a driver
    killed in between leaves a snapshot that names a deleted checkpoint, and
    that trial fails on resume. The trial's newest checkpoint is copied where
    the snapshot looks (the trainer's state in it holds its own epoch, so
    training goes on from there)."""
    mended = 0
    for trial in tune.ExperimentAnalysis(path).trials:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            continue
        fs = checkpoint.filesystem
        if fs.get_file_info(checkpoint.path).type != pafs.FileType.NotFound:
            continue
        folder = checkpoint.path.rsplit("/", 1)[0]
        saved = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(folder))
                       if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))
        if saved:
            fs.create_dir(checkpoint.path)
            pafs.copy_files(saved[-1], checkpoint.path, source_filesystem=fs, destination_filesystem=fs)
            mended += 1
    return mended


@ray.remote(num_cpus=0)
def _sees(path: str) -> str | None:
    """None if the file at `path` is visible on the node this runs on, else why not."""
    try:
        fs, inner = filesystem(path)
        return None if fs.get_file_info(inner).type == pafs.FileType.File else "no such file there"
    except OSError as exc:
        return str(exc).splitlines()[0]


def check_storage(config: Config, out: Path) -> None:
    """Refuse, before any trial, a run root (the store when it is remote, and Tune's
    trials) that some node of the cluster cannot see: as Ray's own storage check
    does, but before the first checkpoint of every trial fails. A file written
    here must be visible from every node, so nodes on one machine or sharing a
    mount pass. (Nodes an autoscaler starts later are not checked.)"""
    root = config.run.root(out)
    fs, path = filesystem(root)
    marker = f".visible-{uuid.uuid4().hex[:12]}"
    where = (f"run.storage_path {config.run.storage_path}" if config.run.storage_path
             else f"the run folder {root} (run.storage_path is not set)")
    try:
        fs.create_dir(path)
        with fs.open_output_stream(f"{path}/{marker}") as handle:
            handle.write(b"every node must see this file")
    except OSError as exc:
        raise InputError(f"cannot write to {where}: {str(exc).splitlines()[0]}") from None
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        probes = [_sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(f"{root}/{marker}") for node in nodes]
        for node, problem in zip(nodes, ray.get(probes)):
            if problem:
                raise InputError(
                    f"{where} is not visible from Ray node {node['NodeManagerAddress']} "
                    f"({problem}); the nodes share no disk: set run.storage_path to storage "
                    "every node reaches, e.g. s3://your-bucket/mtlrank (README, 'Run on a cluster')")
    finally:
        fs.delete_file(f"{path}/{marker}")


def run_sweep(blocks: dict[str, ray_data.TissueBlocks], config: Config, out: Path,
              resume: bool = False, verbose: int = 1) -> tune.ResultGrid:
    """Run every trial over the tissues' materialized blocks; Ray must be initialized.

    With `resume`, an interrupted sweep at the same place continues: finished
    trials are kept, unfinished and failed ones go on from their last checkpoint.
    `verbose` is Tune's progress output (0: none; 1: a status table as trials go).
    """
    settings = {"training": config.training, "search": config.search, "cpu": config.resources.cpu}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, tissues=blocks, settings=settings),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    if resume:
        path = resumable(config, out)
        if restore_missing_checkpoints(path):
            log.info("resume: trials whose last snapshotted checkpoint was gone go on from "
                     "their newest one")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    fs, path = filesystem(experiment_path(config, out))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)  # a re-run replaces the last
    # Keeping one checkpoint per trial forces a state snapshot per epoch: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    callbacks = [_TensorBoardNumbers()]
    if config.asha.enabled:
        scheduler = GroupedASHA(group_of, METRIC, max_t=config.training.epochs,
                                grace_period=config.asha.grace_period,
                                reduction_factor=config.asha.reduction_factor, time_attr="epoch")
        callbacks.append(scheduler.records_keeper())
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trial_grid(list(blocks.values()), config))},
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=config.resources.max_concurrent_trials,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=config.run.root(out),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
                                  callbacks=callbacks, verbose=verbose),
    )
    return tuner.fit()


@ray.remote
def _lasso_task(tissue: ray_data.TissueBlocks, cluster: int, replicate: int, search: SearchConfig,
                standardize: str) -> LassoFit:
    data = ray_data.cluster_data(tissue, cluster)
    split = replicate_split(search, len(data.expression), replicate)
    return fit_lasso(data, split, standardize, search.lasso_alphas)


def run_lasso(blocks: dict[str, ray_data.TissueBlocks],
              config: Config) -> tuple[list[tuple[dict, LassoFit]], list[str]]:
    """The lasso baseline of every (tissue, cluster, replicate): (group, fit) pairs, and
    a line per group that failed (the networks' results are kept either way)."""
    task = _lasso_task.options(num_cpus=config.resources.cpu)
    pending = {task.remote(blocks[group["tissue"]], group["cluster"], group["replicate"],
                           config.search, config.training.standardize): group
               for group in groups(list(blocks.values()), config)}
    total, fits, failed = len(pending), [], []
    while pending:
        (done,), _ = ray.wait(list(pending))
        group = pending.pop(done)
        try:
            fits.append((group, ray.get(done)))
        except ray.exceptions.RayTaskError as exc:
            failed.append(f"lasso {group}: {exc.cause!r}")
            log.error("lasso baseline of %s failed: %r", group, exc.cause)
        log.info("lasso baseline: %d of %d (tissue, cluster, replicate) done",
                 total - len(pending), total)
    return sorted(fits, key=lambda pair: tuple(pair[0].values())), failed


def export_models(results: tune.ResultGrid, lasso: list[tuple[dict, LassoFit]], folder: Path) -> int:
    """Each trial's best weights and genes as FOLDER/<trial name>.npz, and each lasso
    baseline as FOLDER/<tissue>_c<cluster>_r<replicate>_lasso.npz; the folder is
    replaced whole, so it never mixes runs. Returns how many trials were written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(folder, "staging")
    staging.mkdir()
    written = 0
    for result in results:
        if result.checkpoint is None or "genes" not in (result.metrics or {}):
            continue
        with result.checkpoint.as_directory() as checkpoint:
            weights = load_best_weights(Path(checkpoint) / STATE)
        name = Trial(**result.config["trial"]).name
        np.savez(staging / f"{name}.npz", genes=np.array(result.metrics["genes"]), **weights)
        written += 1
    for group, fit in lasso:
        fit.save(staging / f"{lasso_name(**group)}.npz")
    install(staging, folder)
    return written
