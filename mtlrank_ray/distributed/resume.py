"""A sweep kept in storage: never replaced by mistake, and resumed whole.

A new sweep where storage already holds one is refused (`check_new_sweep`)
unless the run says --resume (go on with it) or --fresh (delete it), or the
stored sweep is the one whose results this run folder already holds: its
trials, checkpoints, baselines and rankings may be days of GPU work. A
resumed sweep must cover the same tissues, and its trials whose last
snapshotted checkpoint was already deleted (a sweep stored by an earlier
version) are mended first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from ..config import Config
from ..data.store import filesystem
from ..errors import InputError
from ..run_storage import RECORD, SweepRecord, experiment_path
from . import state_journal
from .tune_storage import tune_storage

log = logging.getLogger(__name__)


def check_new_sweep(config: Config, out: Path, fresh: bool) -> None:
    """Refuse a new sweep over a stored one that --fresh does not replace (see the
    module's docstring)."""
    path = experiment_path(config, out)
    try:
        fs, inner = filesystem(path)
        if fresh or not fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
            return
    except OSError as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    stored = SweepRecord.load(f"{path}/{RECORD}")
    held = SweepRecord.load(str(Path(out) / RECORD))
    if stored is not None and stored.published and held is not None and held.id == stored.id:
        return  # this folder holds its results: a re-run replaces it, as before
    what = (f"the sweep of {', '.join(stored.tissues)} started {stored.created}" if stored
            else "a sweep")
    why = (f"its results are not in {out}" if stored is not None and stored.published
           else "it was interrupted, or is still running")
    raise InputError(f"{path} holds {what} ({why}): pass --resume to continue it, or --fresh to "
                     f"delete it and start {out} over; --out names another run")


def start_new_sweep(path: str, tissues: list[str]) -> SweepRecord:
    """Clear the sweep's place (what `check_new_sweep` let pass) and record the new one."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
    record = SweepRecord(sorted(tissues))
    record.save(f"{path}/{RECORD}")
    return record


def mark_published(path: str, out: Path) -> None:
    """Record that the run folder `out` holds the sweep's results: first the folder's
    copy, then storage's (a kill between leaves a sweep that --resume publishes)."""
    record = SweepRecord.load(f"{path}/{RECORD}")
    record.published = True
    record.save(str(Path(out) / RECORD))
    record.save(f"{path}/{RECORD}")


def resumable(config: Config, out: Path) -> str:
    """The interrupted sweep's path, or an error saying there is none."""
    path = experiment_path(config, out)
    stored, storage_filesystem = tune_storage(path)
    state_journal.settle(storage_filesystem, stored)  # a snapshot the interruption cut short
    if not tune.Tuner.can_restore(stored, storage_filesystem):
        raise InputError(f"there is no sweep to resume at {path}; run without --resume")
    return path


def resume_path(config: Config, out: Path, tissues: list[str]) -> str:
    """The stored sweep to resume over `tissues`, checked and mended."""
    path = resumable(config, out)
    record = SweepRecord.load(f"{path}/{RECORD}")
    if record is None:
        raise InputError(f"the sweep at {path} was made by an older version and cannot be "
                         "resumed; run again with --fresh")
    if set(record.tissues) != set(tissues):  # its trials, baselines and results must cover the same
        raise InputError(f"the sweep to resume at {path} covers the tissues "
                         f"{', '.join(record.tissues)}; resume it with --tissue {','.join(record.tissues)}")
    trials = swept_trials(path)
    if any("lambda" not in t.config.get("trial", {}) for t in trials):
        raise InputError(f"the sweep at {path} was made by an older version and cannot be "
                         "resumed; run again with --fresh")
    if restore_missing_checkpoints(trials):
        log.info("resume: trials whose last snapshotted checkpoint was gone go on from "
                 "their newest one")
    return path


def swept_trials(path: str) -> list:
    """The trials of the sweep at `path`, without Tune's warning for each trial that has
    not reported yet (an interrupted sweep has such trials by design)."""
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        stored, storage_filesystem = tune_storage(path)
        return tune.ExperimentAnalysis(stored, storage_filesystem=storage_filesystem).trials
    finally:
        analysis_log.setLevel(level)


def restore_missing_checkpoints(trials: list) -> int:
    """Make every one of a sweep's trials restorable; returns how many were mended.

    Tune deletes a trial's superseded checkpoint as soon as the next one is
    registered, before the next experiment snapshot stops naming it; this
    version waits for that snapshot (`snapshots.Superseded`), earlier ones
    did not, and a driver of theirs killed in between left a snapshot that names
    a deleted checkpoint, whose trial fails on resume. The trial's newest checkpoint is copied where
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
