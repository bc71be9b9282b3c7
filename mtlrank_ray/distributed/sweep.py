"""The Ray Tune sweep: one trial per (tissue, cluster, replicate, λ, searched setting).

A trial is a plain function of its config (Ray's function API): it assembles
its cluster from the tissue's blocks, trains with `ClusterTrainer`, and after
every epoch reports (`ray.tune.report`) the epoch's mean validation R², the
training loss and steps/s, plus the best epoch so far with its genes'
validation and test R². Grouped ASHA stops weak configurations within each
(tissue, cluster, replicate); the last report of a stopped trial still holds its best
epoch's results.

What a trial writes to storage (`<run root>/sweep/<trial name>/`):
- `model.npz`, the best weights and genes, at the epochs where the trial can
  end (ASHA's rungs and the last epoch) when the best epoch changed since the
  last write: a stopped trial's model is always there, and nothing else is
  ever fetched to export or rank it;
- a Tune checkpoint of the whole trainer state when `run.checkpoint_every_epochs`
  or `run.checkpoint_every_s` has passed (not at the last epoch: the trial is
  done). A crashed trial goes on from it, exactly as it would have.

The baselines and rankings run beside the trials (`group_tasks`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.util.metrics import Gauge
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..analysis.baselines import BaselineFit, baseline_name
from ..config import Config, RunSettings
from ..core.cluster_data import replicate_split
from ..core.trial import Trial
from ..data.store import fetch_files, filesystem, put_file, read_file, sibling
from ..errors import InputError
from . import ray_data, search_space
from .asha import GroupedASHA, rungs
from .atomic_fs import tune_storage
from .group_tasks import Group, group_of

if TYPE_CHECKING:
    from ..core.trainer import ClusterTrainer, EpochReport

EXPERIMENT = "sweep"
STATE = "trainer_state.npz"
MODEL = "model.npz"
METRIC = "mean_val_r2"
TISSUES = "tissues.json"  # the tissues a sweep covers, for --resume

log = logging.getLogger(__name__)


def groups(tissues: list[ray_data.TissueBlocks], config: Config) -> list[Group]:
    """Every (tissue, cluster, replicate): the configurations of one group compete, and
    each group gets its baselines and one ranking."""
    return [(tissue.name, cluster, replicate)
            for tissue in tissues for cluster in ray_data.tissue_clusters(tissue)
            for replicate in range(config.search.replicates)]


def trial_grid(tissues: list[ray_data.TissueBlocks], config: Config) -> list[dict]:
    """Every trial's Tune config (`config["trial"]`), group by group, each group's in
    its seeded order (`search_space.group_order`)."""
    lambdas = sorted(config.search.lambdas)
    settings = search_space.settings(config.search)
    return [trial.config for group in groups(tissues, config)
            for trial in search_space.group_order(config.search, group, [
                Trial(*group, float(lam), tuple(setting.items())) for setting in settings for lam in lambdas])]


def is_baseline(config: dict) -> bool:
    """λ = 0, the independent per-gene networks: always trained to the last epoch."""
    return config["trial"]["lambda"] == 0


def trial_name(trial) -> str:
    return Trial.from_config(trial.config["trial"]).name


def model_location(experiment: str, trial: Trial) -> str:
    """Where a trial keeps its model in the sweep's storage."""
    return f"{experiment}/{trial.name}/{MODEL}"


def ending_epochs(config: Config, epochs: int, baseline: bool) -> set[int]:
    """The epochs at which a trial of `epochs` epochs can end: the last, and ASHA's
    rungs before it (λ = 0, never stopped: the last only)."""
    if baseline or not config.asha.enabled:
        return {epochs}
    return {epochs} | {rung for rung in rungs(config.asha.grace_period, config.asha.reduction_factor,
                                              max_epochs(config)) if rung < epochs}


def max_epochs(config: Config) -> int:
    """The most epochs any trial trains (`training.epochs` unless epochs is searched)."""
    domain = config.search.space.get("epochs")
    return max(next(iter(domain.values()))) if domain else config.training.epochs


class _TrialStorage:
    """What one trial writes to storage, and how many bytes (see the module's docstring)."""

    def __init__(self, trainer: ClusterTrainer, location: str, run: RunSettings, ends: set[int]):
        self.trainer, self.location, self.run, self.ends = trainer, location, run, ends
        self.model_epoch: int | None = None  # the best epoch the stored model holds (None: unknown)
        self.last_save = time.monotonic()
        self.bytes_written = 0

    def write_model(self, epoch: EpochReport) -> None:
        if epoch.epoch in self.ends and epoch.best_epoch != self.model_epoch:
            payload = self.trainer.best_model()
            put_file(self.location, payload)
            self.bytes_written += len(payload)
            self.model_epoch = epoch.best_epoch

    def checkpoint_due(self, epoch: int, last: int) -> bool:
        every_epochs, every_s = self.run.checkpoint_every_epochs, self.run.checkpoint_every_s
        now = time.monotonic()
        due = epoch < last and ((every_epochs is not None and epoch % every_epochs == 0)
                                or (every_s is not None and now - self.last_save >= every_s))
        if due:
            self.last_save = now
        return due


def train_trial(config: dict, tissues: dict[str, ray_data.TissueBlocks], settings: dict) -> None:
    """The trainable: train one (tissue, cluster, replicate, λ, setting), reporting every
    epoch."""
    from ..core.trainer import (  # TensorFlow: in the trials' workers only
        ClusterTrainer,
        configure_runtime,
    )

    configure_runtime(settings["config"].resources.cpu)
    spec = Trial.from_config(config["trial"])
    run_config: Config = settings["config"]
    training, search = dataclasses.replace(run_config.training, **dict(spec.settings)), run_config.search
    data = ray_data.cluster_data(tissues[spec.tissue], spec.cluster)
    split = replicate_split(search, len(data.expression), spec.replicate)
    trainer = ClusterTrainer(data, spec, training, split, search.seed)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.restore(Path(folder) / STATE)
    ends = ending_epochs(run_config, training.epochs, baseline=spec.lam == 0)
    storage = _TrialStorage(trainer, model_location(settings["experiment"], spec), run_config.run, ends)
    node = ray.get_runtime_context().get_node_id()
    searched = {"lambda": spec.lam, **dict(spec.settings)}  # progress.csv has no config columns

    def report(epoch: EpochReport) -> None:
        record_metrics(spec, epoch)
        storage.write_model(epoch)
        metrics = {**_metrics(epoch, data.genes), **searched, "node": node}
        if not storage.checkpoint_due(epoch.epoch, training.epochs):
            tune.report({**metrics, "storage_bytes": storage.bytes_written})
            return
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(Path(folder) / STATE)
            storage.bytes_written += (Path(folder) / STATE).stat().st_size
            tune.report({**metrics, "storage_bytes": storage.bytes_written},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    trainer.fit(training.epochs, on_epoch=report)


@functools.lru_cache(maxsize=1)
def _gauges() -> dict[str, Gauge]:
    """This worker's gauges, exported on the node's Prometheus endpoint (and so in the
    dashboard's metrics views) as ray_mtlrank_*."""
    tags = ("tissue", "cluster", "replicate", "lambda", "trial")
    return {"val_r2": Gauge("mtlrank_val_r2", "mean validation R^2 of the trial's last epoch", tags),
            "epochs": Gauge("mtlrank_epochs", "epochs the trial has finished", tags),
            "steps_per_s": Gauge("mtlrank_steps_per_s", "training steps per second", tags)}


def record_metrics(trial: Trial, epoch: EpochReport) -> None:
    tags = {"tissue": trial.tissue, "cluster": str(trial.cluster),
            "replicate": str(trial.replicate), "lambda": f"{trial.lam:g}", "trial": trial.name}
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
    if not tune.Tuner.can_restore(path, storage_filesystem=tune_storage(path)[1]):
        raise InputError(f"there is no sweep to resume at {path}; run without --resume")
    return path


def swept_trials(path: str) -> list:
    """The trials of the sweep at `path`, without Tune's warning for each trial that has
    not reported yet (an interrupted sweep has such trials by design)."""
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        return tune.ExperimentAnalysis(path, storage_filesystem=tune_storage(path)[1]).trials
    finally:
        analysis_log.setLevel(level)


def restore_missing_checkpoints(trials: list) -> int:
    """Make every one of a sweep's trials restorable; returns how many were mended.

    Tune deletes a trial's superseded checkpoint as soon as the next one is
    registered, before the next experiment snapshot stops naming it: a driver
    killed in between leaves a snapshot that names a deleted checkpoint, and
    that trial fails on resume. The trial's newest checkpoint is copied where
    the snapshot looks (the trainer's state in it holds its own epoch, so
    training goes on from there)."""
    mended = 0
    for trial in trials:
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
              resume: bool = False, verbose: int = 1, callbacks: tuple = (),
              trainable=train_trial) -> tune.ResultGrid:
    """Run every trial over the tissues' materialized blocks; Ray must be initialized.

    With `resume`, an interrupted sweep at the same place continues: finished
    trials are kept, unfinished and failed ones go on from their last checkpoint.
    `verbose` is Tune's progress output (0: none; 1: a status table as trials go).
    `callbacks` are Tune callbacks of a new sweep (a resumed one keeps its own);
    `trainable` is `train_trial` or, in tests, a wrapper of it.
    """
    settings = {"config": config, "experiment": experiment_path(config, out)}
    trainable = tune.with_resources(
        tune.with_parameters(trainable, tissues=blocks, settings=settings),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    if resume:
        path = resumable(config, out)
        try:
            swept = set(json.loads(read_file(f"{path}/{TISSUES}")))
        except FileNotFoundError:
            raise InputError(f"the sweep at {path} was made by an older version and cannot be "
                             "resumed; run again with --fresh") from None
        if swept != set(blocks):  # its trials, baselines and results must cover the same tissues
            raise InputError(f"the sweep to resume at {path} covers the tissues "
                             f"{', '.join(sorted(swept))}; resume it with --tissue {','.join(sorted(swept))}")
        trials = swept_trials(path)
        if any("lambda" not in t.config.get("trial", {}) for t in trials):
            raise InputError(f"the sweep at {path} was made by an older version and cannot be "
                             "resumed; run again with --fresh")
        if restore_missing_checkpoints(trials):
            log.info("resume: trials whose last snapshotted checkpoint was gone go on from "
                     "their newest one")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True,
                                  storage_filesystem=tune_storage(path)[1]).fit()
    fs, path = filesystem(experiment_path(config, out))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)  # a re-run replaces the last
    # Tune makes trials as it starts them, so its saved state may not name every tissue yet.
    put_file(f"{experiment_path(config, out)}/{TISSUES}", json.dumps(sorted(blocks)).encode())
    callbacks = [_TensorBoardNumbers(), *callbacks]
    if config.asha.enabled:
        scheduler = GroupedASHA(group_of, METRIC, max_t=max_epochs(config),
                                grace_period=config.asha.grace_period,
                                reduction_factor=config.asha.reduction_factor, time_attr="epoch",
                                never_stop=is_baseline)
        callbacks.append(scheduler.records_keeper())
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    storage_path, storage_filesystem = tune_storage(config.run.root(out))
    if config.search.searcher:
        from .optuna_search import GroupedOptuna  # the optional extra

        space, searcher = {}, GroupedOptuna(groups(list(blocks.values()), config), config.search, METRIC)
        samples = searcher.total_trials
        # With a searcher Tune keeps one trial waiting for resources; more, so that free CPUs
        # go to trials before the baselines queued beside them (`group_tasks`).
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(
            1, int(ray.cluster_resources().get("CPU", 1) // config.resources.cpu))))
    else:
        space, searcher, samples = ({"trial": tune.grid_search(trial_grid(list(blocks.values()), config))},
                                    None, 1)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=searcher, num_samples=samples,
                                    reuse_actors=True,
                                    max_concurrent_trials=config.resources.max_concurrent_trials,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage_path,
                                  storage_filesystem=storage_filesystem,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
                                  callbacks=callbacks, verbose=verbose),
    )
    return tuner.fit()


def used_trials(selected: pd.DataFrame) -> list[Trial]:
    """The trials whose models the results use: per group, the selected configuration
    and λ = 0 at its settings (when that has a result)."""
    trials = []
    for row in selected.to_dict("records"):
        trials.append(Trial.from_config(row))
        if row["lambda"] != 0 and pd.notna(row.get("lambda0_mean_val_r2")):
            trials.append(trials[-1].at(0.0))
    return trials


def fetch_models(experiment: str, trials: list[Trial], folder: Path) -> None:
    """Copy the trials' models from the sweep's storage to FOLDER/<trial name>.npz,
    many at once; each file appears whole. A missing one is an error naming it."""
    wanted = {model_location(experiment, t): folder / f"{t.name}.npz" for t in trials}
    staged = {location: sibling(path, "fetch") for location, path in wanted.items()}
    try:
        missing = fetch_files(list(staged.items()))
        for location, temporary in staged.items():
            if location not in missing:
                temporary.replace(wanted[location])
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
    if missing:
        raise InputError(f"{missing[0]} is missing ({len(missing)} models): that trial kept no "
                         f"model (it failed, the sweep at {experiment} is gone, or a later sweep "
                         "into the folder was interrupted: finish it with python tune.py ... --resume).")


def stage_models(selected: pd.DataFrame, baselines: dict[tuple[Group, str], BaselineFit], experiment: str,
                 folder: Path, keep: list[Path] = ()) -> Path:
    """A staging folder beside FOLDER for `store.install` to put in its place whole (so
    models/ never mixes runs): the models the results use (`used_trials`), fetched from
    the sweep's storage in parallel, each baseline as
    <tissue>_c<cluster>_r<replicate>_<method>.npz, and the files `keep` (earlier tissues'
    models). The other trials' models stay in the sweep's storage
    (`mtlrank-ray rank RUN --lambda X` fetches them)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(folder, "staging")
    staging.mkdir()
    try:
        fetch_models(experiment, used_trials(selected), staging)
        for (group, method), fit in baselines.items():
            fit.save(staging / f"{baseline_name(*group, method)}.npz")
        for path in keep:
            shutil.copy2(path, staging / path.name)
    except BaseException:
        shutil.rmtree(staging)
        raise
    return staging
