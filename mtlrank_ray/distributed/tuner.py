"""Tune's wiring: one trial per (tissue, cluster, replicate, λ, searched setting),
grouped ASHA (or FIFO), the searcher, storage, and what a sweep does when a
trial finds no GPU. The trial itself is `trainable.train_trial`; the baselines
and rankings beside it are `group_tasks`'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray import cloudpickle, tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.stopper import Stopper

from ..config import Config
from ..core.trial import Trial
from ..errors import ConfigError, InputError
from ..run_storage import EXPERIMENT, experiment_path
from . import ray_data, resume, search_space
from .asha import GroupedASHA
from .snapshots import SUPERSEDED
from .tune_storage import tune_storage
from .group_tasks import Group, group_of
from .trainable import HISTORY, METRIC, NoGpuError, train_trial
from .trial_storage import max_epochs


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


class _TensorBoardNumbers(TBXLoggerCallback):
    """Tune's TensorBoard logs without the reported gene names, which are not a
    number TensorBoard can plot (Tune would warn of an invalid value)."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "genes"})


class _DriversLogFirst:
    """Tune copies a trial's log (result.json, progress.csv) from storage over the
    driver's whenever the trial starts from a checkpoint (`LoggerCallback.
    _restore_from_remote`, `ray/tune/logger/logger.py`). A resumed driver has no log
    of its own and needs that copy; but a trial paused at a rung, or moved off a lost
    node, would lose the lines this driver logged since storage's copy (snapshots come
    on Tune's period: `snapshots`), and Tune warns on the console where storage has
    none yet. The driver's own log is kept where it has one."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class _JsonLog(_DriversLogFirst, JsonLoggerCallback):
    pass


class _CsvLog(_DriversLogFirst, CSVLoggerCallback):
    pass


class StopWithoutGpu(tune.Callback, Stopper):
    """Ends the sweep once a trial failed for want of a GPU: every other trial would
    too. The message is kept on the class, so the copy Tune restores on --resume
    reports to the same place."""

    missing: str | None = None

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        # The driver's own copy: the one in storage is uploaded later.
        path = trial.pickled_error_file
        if not path or not os.path.isfile(path):
            return
        with open(path, "rb") as handle:
            error = cloudpickle.load(handle)
        cause = getattr(error, "cause", error)
        if isinstance(cause, NoGpuError):
            StopWithoutGpu.missing = str(cause)

    # Its first failure, not after run.max_failures retries: no retry would find a GPU.
    on_trial_recover = on_trial_error

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return StopWithoutGpu.missing is not None


class ForgetFinishedWindows(tune.Callback):
    """Drops a finished trial's windows of recent values (Tune keeps, for every numeric
    metric of every trial, deques of its last 5 and 10 values, and their pickles in the
    trial's cached state: about 40 KB a trial, for the whole sweep). Its max, min,
    average and last-n averages stay; only a running trial adds to them."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        trial.run_metadata.metric_n_steps.clear()
        trial.run_metadata.invalidate_cache()


class _NoGpuQuiet(logging.Filter):
    """Drops Tune's traceback of a trial that found no GPU: the sweep ends with
    that trial's one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(getattr(error, "cause", error), NoGpuError)


def check_concurrency(config: Config) -> None:
    """Grouped ASHA holds a group's early trials at each rung until all of them reach it:
    a cap below a group's size would wait for ever."""
    group_size, limit = search_space.trials_per_group(config.search), config.resources.max_concurrent_trials
    if config.asha.enabled and limit is not None and limit < group_size:
        raise ConfigError(
            f"resources.max_concurrent_trials {limit} is below the {group_size} trials of a "
            "group: with asha.enabled a group's trials wait at each rung until all of them "
            f"reach it; allow at least {group_size}, or set asha.enabled: false.")


def run_sweep(blocks: dict[str, ray_data.TissueBlocks], config: Config, out: Path,
              resume_sweep: bool = False, verbose: int = 1, callbacks: tuple = (),
              trainable=train_trial) -> tune.ResultGrid:
    """Run every trial over the tissues' materialized blocks; Ray must be initialized.

    With `resume_sweep`, the interrupted sweep at the same place continues:
    finished trials are kept, unfinished and failed ones go on from their last
    checkpoint. Otherwise a new sweep replaces what `resume.check_new_sweep` let
    pass. `verbose` is Tune's progress output (0: none; 1: a status table as trials
    go). `callbacks` are Tune callbacks of a new sweep (a resumed one keeps its
    own); `trainable` is `train_trial` or, in tests, a wrapper of it. A trial that
    finds no GPU where it asked for one ends the sweep with an `InputError`.
    """
    check_concurrency(config)
    path = experiment_path(config, out)
    settings = {"config": config, "experiment": path}
    trainable = tune.with_resources(
        tune.with_parameters(trainable, tissues=blocks, settings=settings),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    StopWithoutGpu.missing = None
    if resume_sweep:
        stored, storage_filesystem = tune_storage(resume.resume_path(config, out, list(blocks)))
        tuner = tune.Tuner.restore(stored, trainable=trainable, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    else:
        resume.start_new_sweep(path, list(blocks))
        tuner = _new_tuner(trainable, blocks, config, out, verbose, callbacks)
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    quiet = _NoGpuQuiet()
    tune_log.addFilter(quiet)
    SUPERSEDED.forget()
    try:
        grid = tuner.fit()
    finally:
        tune_log.removeFilter(quiet)
    if StopWithoutGpu.missing:
        raise InputError(StopWithoutGpu.missing)
    return grid


def _new_tuner(trainable, blocks: dict[str, ray_data.TissueBlocks], config: Config, out: Path,
               verbose: int, callbacks: tuple) -> tune.Tuner:
    gpu_check = StopWithoutGpu()
    callbacks = [_JsonLog(), _CsvLog(), _TensorBoardNumbers(), gpu_check, ForgetFinishedWindows(),
                 *callbacks]
    if config.asha.enabled:
        scheduler = GroupedASHA(group_of, METRIC, max_t=max_epochs(config),
                                grace_period=config.asha.grace_period,
                                reduction_factor=config.asha.reduction_factor,
                                group_size=search_space.trials_per_group(config.search),
                                time_attr="epoch", never_stop=is_baseline, history=HISTORY)
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
    return tune.Tuner(
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
                                  stop=gpu_check, callbacks=callbacks, verbose=verbose,
                                  # In a notebook Tune's default is its Jupyter reporter,
                                  # which clears the cell's output as it starts, even
                                  # silent (JupyterNotebookReporter.display in
                                  # ray/tune/progress_reporter.py): the phase lines went.
                                  progress_reporter=None if verbose else tune.CLIReporter()),
    )
