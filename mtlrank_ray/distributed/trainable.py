"""The trainable: one trial is a plain function of its Tune config (Ray's function
API). It assembles its cluster from the tissue's blocks, trains with
`ClusterTrainer`, and after every epoch reports (`ray.tune.report`) the epoch's
mean validation R², the training loss and steps/s, plus the best epoch so far
with its genes' validation and test R². Grouped ASHA stops weak configurations
within each (tissue, cluster, replicate); the last report of a stopped trial
still holds its best epoch's results. What it writes to storage, and when, is
`trial_storage`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray import tune
from ray.util.metrics import Gauge

from ..config import Config
from ..core.cluster_data import replicate_split
from ..core.trial import Trial
from . import ray_data
from .trial_storage import STATE, TrialStorage, ending_epochs, last_report

if TYPE_CHECKING:
    from ..core.trainer import EpochReport

METRIC = "mean_val_r2"  # what grouped ASHA compares
# In the last report only: METRIC at every epoch, from which grouped ASHA takes the
# rungs of a trial that ended after the snapshot a resume starts from (asha.py).
HISTORY = "mean_val_r2_by_epoch"


class NoGpuError(RuntimeError):
    """A trial asked for a GPU (`resources.gpu`) and TensorFlow sees none on its node."""


def train_trial(config: dict, tissues: dict[str, ray_data.TissueBlocks], settings: dict) -> None:
    """Train one (tissue, cluster, replicate, λ, setting), reporting every epoch."""
    from ..core.trainer import (  # TensorFlow: in the trials' workers only
        ClusterTrainer,
        configure_runtime,
    )

    run_config: Config = settings["config"]
    gpus = configure_runtime(run_config.resources.cpu, run_config.resources.deterministic_ops)
    node = ray.get_runtime_context().get_node_id()
    if run_config.resources.gpu > 0 and run_config.resources.require_gpu and not gpus:
        raise NoGpuError(
            f"a trial asked for resources.gpu {run_config.resources.gpu:g} but TensorFlow sees no GPU "
            f"on Ray node {ray.util.get_node_ip_address()} (Ray assigned GPU "
            f"{','.join(map(str, ray.get_gpu_ids())) or 'none'}): give the nodes an NVIDIA driver "
            "for CUDA 12 and TensorFlow with CUDA (cluster.yaml's AMI and image), or set "
            "resources.gpu: 0 to train on CPUs")
    spec = Trial.from_config(config["trial"])
    done = last_report(settings["experiment"], spec)
    if done is not None:  # the snapshot this resumes from predates the trial's end
        tune.report(done)
        return
    training, search = dataclasses.replace(run_config.training, **dict(spec.settings)), run_config.search
    data = ray_data.cluster_data(tissues[spec.tissue], spec.cluster)
    split = replicate_split(search, len(data.expression), spec.replicate)
    trainer = ClusterTrainer(data, spec, training, split, search.seed)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.restore(Path(folder) / STATE)
    ends = ending_epochs(run_config, training.epochs, baseline=spec.lam == 0)
    storage = TrialStorage(trainer, settings["experiment"], spec, run_config.run, ends)
    searched = {"lambda": spec.lam, **dict(spec.settings)}  # progress.csv has no config columns

    def report(epoch: EpochReport) -> None:
        record_metrics(spec, epoch)
        storage.write_model(epoch)
        metrics = {**_metrics(epoch, data.genes), **searched, "node": node}
        if epoch.epoch == training.epochs:
            metrics[HISTORY] = [past["mean_val_r2"] for past in trainer.history]
        # The bytes before the checkpoint for its stored last report (a last checkpoint adds
        # none), after it for the report.
        with tempfile.TemporaryDirectory() as folder:
            due = storage.write_checkpoint(epoch.epoch, training.epochs, Path(folder),
                                           {**metrics, "storage_bytes": storage.bytes_written})
            tune.report({**metrics, "storage_bytes": storage.bytes_written},
                        checkpoint=tune.Checkpoint.from_directory(folder) if due else None)

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
