"""Where a run keeps what every node must reach: its root is the run folder, or
<run.storage_path>/<the run folder's name> on a cluster (`RunSettings.root`).

    <root>/store/                              the aligned store
    <root>/sweep/                              Tune's experiment: a folder per trial
    <root>/sweep/<trial name>/model.npz        the trial's best model (`trial_storage`)
    <root>/sweep/sweep.json                    the sweep's record: id, tissues, published
    <root>/sweep/baselines/<group>_<method>.npz    each baseline fit, written as it finishes
    <root>/sweep/rankings/<trial name>.parquet     each group's TF rankings, likewise

The baselines and rankings live inside the sweep's folder so that a sweep
replaced (--fresh) takes them along and a resumed one finds them. No Ray here:
the analysis reads models through this module too.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from .config import Config
from .core.trial import Trial
from .data.store import fetch_files, filesystem, put_file, read_file, read_parquet, sibling
from .errors import InputError

EXPERIMENT = "sweep"
MODEL = "model.npz"
FINISHED = "finished.json"  # a trial that trained its last epoch: its last report
RECORD = "sweep.json"
BASELINES_FOLDER = "baselines"
RANKINGS_FOLDER = "rankings"


def experiment_path(config: Config, out: Path) -> str:
    """Where Tune keeps the sweep: EXPERIMENT/ in the run's root."""
    return f"{config.run.root(out)}/{EXPERIMENT}"


def model_location(experiment: str, trial: Trial) -> str:
    return f"{experiment}/{trial.name}/{MODEL}"


def finished_location(experiment: str, trial: Trial) -> str:
    return f"{experiment}/{trial.name}/{FINISHED}"


def baseline_location(experiment: str, name: str) -> str:
    """A baseline fit's file; `name` is `baseline_name(tissue, cluster, replicate, method)`."""
    return f"{experiment}/{BASELINES_FOLDER}/{name}.npz"


def ranking_location(experiment: str, trial: Trial) -> str:
    """The rankings of a group's chosen trial."""
    return f"{experiment}/{RANKINGS_FOLDER}/{trial.name}.parquet"


def stored_names(folder: str, suffix: str) -> set[str]:
    """The file names (without `suffix`) in a storage folder; none if it is missing."""
    fs, path = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {i.base_name.removesuffix(suffix) for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix)}


def put_frame(location: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    put_file(location, buffer.getvalue())


def read_frame(location: str) -> pd.DataFrame:
    return read_parquet(io.BytesIO(read_file(location)))


@dataclass
class SweepRecord:
    """What the driver records of a sweep beside Tune's own state: the tissues it covers
    (Tune makes trials lazily, so its state need not name them all yet), an id, and
    whether its results were written to a run folder (which keeps a copy)."""

    tissues: list[str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    published: bool = False

    def save(self, location: str) -> None:
        put_file(location, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, location: str) -> SweepRecord | None:
        """The record at `location` (a file in storage or a run folder); None if there is none."""
        try:
            return cls(**json.loads(read_file(location)))
        except FileNotFoundError:
            return None
        except (TypeError, ValueError):  # a record of an older layout
            raise InputError(f"{location} was written by an older version; run again with "
                             "--fresh") from None


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
