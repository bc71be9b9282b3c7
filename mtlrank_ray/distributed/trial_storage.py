"""What a trial writes to storage, and when (`<run root>/sweep/<trial name>/`):

- `model.npz`, the best weights and genes, at the epochs where the trial can
  end (ASHA's rungs and the last epoch) when the best epoch changed since the
  last write: a stopped trial's model is always there, and nothing else is
  ever fetched to export or rank it;
- a Tune checkpoint of the whole trainer state at ASHA's rungs (where the trial
  may be paused until its group has reached the rung) and when
  `run.checkpoint_every_epochs` or `run.checkpoint_every_s` has passed (not at
  the last epoch: the trial is done). A paused or crashed trial goes on from it,
  exactly as it would have;
- at the last epoch, before Tune hears of it, the trial's last report:
  `finished.json` in its folder, and a checkpoint that holds only that report
  (and replaces its state). Snapshots come on Tune's period (`snapshots`): a
  driver killed after a trial's end but before a snapshot recorded it leaves
  a snapshot in which the trial still runs, from an earlier checkpoint or from
  none, or has not started. Resumed, a trial whose folder holds `finished.json`
  reports that report again and ends, instead of training again. Its model and
  results are those of its one training; Tune's logs of it (result.json,
  progress.csv) are restored from storage only where the snapshot names a
  checkpoint (`LoggerCallback._restore_from_remote`,
  `ray/tune/logger/logger.py`), and otherwise start again with that report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, RunSettings
from ..data.store import put_file, read_file
from ..run_storage import FINISHED, finished_location, model_location
from .asha import rungs

if TYPE_CHECKING:
    from ..core.trainer import ClusterTrainer, EpochReport
    from ..core.trial import Trial

STATE = "trainer_state.npz"  # the trainer's whole state in a Tune checkpoint


def max_epochs(config: Config) -> int:
    """The most epochs any trial trains (`training.epochs` unless epochs is searched)."""
    domain = config.search.space.get("epochs")
    return max(next(iter(domain.values()))) if domain else config.training.epochs


def ending_epochs(config: Config, epochs: int, baseline: bool) -> set[int]:
    """The epochs at which a trial of `epochs` epochs can end: the last, and ASHA's
    rungs before it (λ = 0, never stopped: the last only)."""
    if baseline or not config.asha.enabled:
        return {epochs}
    return {epochs} | {rung for rung in rungs(config.asha.grace_period, config.asha.reduction_factor,
                                              max_epochs(config)) if rung < epochs}


class TrialStorage:
    """One trial's writes (see the module's docstring), and how many bytes."""

    def __init__(self, trainer: ClusterTrainer, experiment: str, trial: Trial, run: RunSettings,
                 ends: set[int]):
        self.trainer, self.run, self.ends = trainer, run, ends
        self.model = model_location(experiment, trial)
        self.finished = finished_location(experiment, trial)
        self.model_epoch: int | None = None  # the best epoch the stored model holds (None: unknown)
        self.last_save = time.monotonic()
        self.bytes_written = 0

    def write_model(self, epoch: EpochReport) -> None:
        if epoch.epoch in self.ends and epoch.best_epoch != self.model_epoch:
            payload = self.trainer.best_model()
            put_file(self.model, payload)
            self.bytes_written += len(payload)
            self.model_epoch = epoch.best_epoch

    def write_checkpoint(self, epoch: int, last: int, folder: Path, report: dict) -> bool:
        """Fill `folder` with the checkpoint due after `epoch` of `last`, if any (see the
        module's docstring), `report` being the epoch's; returns whether one is due."""
        if epoch == last:
            payload = json.dumps(report).encode()
            put_file(self.finished, payload)  # first: a checkpoint of it says it is there
            (folder / FINISHED).write_bytes(payload)
            return True
        every_epochs, every_s = self.run.checkpoint_every_epochs, self.run.checkpoint_every_s
        now = time.monotonic()
        if not (epoch in self.ends  # a rung: the trial may be paused there (asha.py)
                or (every_epochs is not None and epoch % every_epochs == 0)
                or (every_s is not None and now - self.last_save >= every_s)):
            return False
        self.last_save = now
        self.trainer.save(folder / STATE)
        self.bytes_written += (folder / STATE).stat().st_size
        return True


def last_report(experiment: str, trial: Trial) -> dict | None:
    """The last report of a trial that already trained its last epoch (see the module's
    docstring); None if it has not."""
    try:
        return json.loads(read_file(finished_location(experiment, trial)))
    except FileNotFoundError:
        return None
