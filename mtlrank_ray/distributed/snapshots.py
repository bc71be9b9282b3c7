"""Tune's experiment snapshots: on Tune's own period, and never naming a deleted checkpoint.

With `num_to_keep=1` Tune deletes a trial's superseded checkpoint as soon as
the next is registered, and forces an experiment snapshot at every trial
checkpoint so that storage does not name a deleted one for long
(`_ExperimentCheckpointManager.on_trial_checkpoint`,
`ray/tune/execution/experiment_state.py`); a forced snapshot also waits in the
driver's loop for the last upload. At thousands of trials that is Tune's whole
record (17 KB a trial) written per checkpoint: 1,186 snapshots for 2,000
trials. Here the deletion waits instead (`Superseded`): the filesystem Tune
writes through (`tune_storage`) holds a checkpoint folder Tune deletes until a
snapshot captured after that is in storage, so the snapshot there always names
checkpoints that exist, and Tune's controller is built without the forcing
(`_snapshots_on_tunes_period`): snapshots keep Tune's own period, 10 s apart
or more and at most about 5% of its loop (`TUNE_GLOBAL_CHECKPOINT_S`, "auto").
A driver killed before that snapshot leaves the superseded folders in storage:
a few files too many, never one missing.
"""

from __future__ import annotations

import logging
import posixpath
import threading

import pyarrow.fs as pafs
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_"  # a trial's checkpoint folder: checkpoint_000003


class Superseded:
    """Checkpoint folders Tune deleted (num_to_keep), each deleted once a snapshot of its
    experiment captured after that is in storage: until then storage's snapshot may
    still name it. Captures are numbered in this process; a folder let go before
    capture n goes once capture n or a later one is installed. The driver's loop lets
    them go and captures; its upload thread installs and deletes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_capture = 0
        self.waiting: list[tuple[int, pafs.FileSystem, str]] = []  # (capture, filesystem, folder)

    @staticmethod
    def holds(path: str) -> bool:
        """Whether `path` is a trial's checkpoint folder, which waits."""
        return posixpath.basename(path).startswith(CHECKPOINT)

    def forget(self) -> None:
        """Drop what an earlier sweep of this process left waiting (it ended without its
        last snapshot): its folders stay, as a killed driver's do."""
        with self.lock:
            self.waiting.clear()

    def capture_number(self) -> int:
        with self.lock:
            self.next_capture += 1
            return self.next_capture - 1

    def add(self, fs: pafs.FileSystem, folder: str) -> None:
        with self.lock:
            self.waiting.append((self.next_capture, fs, folder))

    def delete_after(self, installed: int, experiment: str) -> None:
        """Delete the folders of `experiment` let go before capture `installed`."""
        due, kept = [], []
        with self.lock:
            for item in self.waiting:
                (due if item[0] <= installed and _experiment_of(item[2]) == experiment else kept).append(item)
            self.waiting = kept
        for _, fs, folder in due:
            try:
                fs.delete_dir(folder)
            except OSError as exc:  # gone already: nothing to free, and the snapshot stands
                log.debug("superseded checkpoint %s not deleted: %s", folder, exc)


def _experiment_of(checkpoint: str) -> str:
    return posixpath.dirname(posixpath.dirname(checkpoint))  # <experiment>/<trial>/checkpoint_*


SUPERSEDED = Superseded()


def _snapshots_on_tunes_period(controller: TuneController) -> _ExperimentCheckpointManager:
    """Ray 2.60's `TuneController._create_checkpoint_manager`, without the snapshot forced
    at every trial checkpoint where the storage defers deletions (see the module's
    docstring); any other Tune run of the process keeps Ray's rule."""
    handler = getattr(controller._storage.storage_filesystem, "handler", None)
    forced = (None if getattr(handler, "defers_checkpoint_deletion", False)
              else controller._trial_checkpoint_config.num_to_keep)
    return _ExperimentCheckpointManager(storage=controller._storage,
                                        checkpoint_period=controller._checkpoint_period,
                                        sync_every_n_trial_checkpoints=forced)


TuneController._create_checkpoint_manager = _snapshots_on_tunes_period
