"""A run folder holds every tissue run into it.

A sweep of some tissues replaces those tissues' rows, models and rankings and
keeps the other tissues' from earlier runs into the same folder; the tables,
network and report are rebuilt from the union. Earlier tissues are kept only
if they were swept with the same settings (everything but where and on what
it ran), so one folder never mixes results of different sweeps; otherwise the
run is refused before it starts. `--fresh` starts the folder over.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .analysis.baselines import BaselineFit, baseline_name
from .config import Config, load_config
from .core.trial import Trial
from .data.store import read_parquet, sibling
from .errors import InputError
from .run_storage import fetch_models

COMPARED = ("data", "genes", "training", "search", "asha")  # what makes results comparable


@dataclass
class EarlierTissues:
    """What the run folder keeps of tissues this run does not sweep."""
    tissues: list[str] = field(default_factory=list)
    genes: pd.DataFrame | None = None  # gene_r2 rows
    rankings: pd.DataFrame | None = None  # rankings rows
    models: list[Path] = field(default_factory=list)  # files in models/


def earlier_tissues(out: Path, config: Config, tissues: list[str], fresh: bool) -> EarlierTissues:
    """The earlier tissues of OUT to keep beside this run's `tissues` (none with
    `fresh`); an error if they were swept with other settings."""
    out = Path(out)
    if fresh or not (out / "gene_r2.parquet").is_file():
        return EarlierTissues()
    genes = read_parquet(out / "gene_r2.parquet")
    genes = genes[~genes.tissue.isin(tissues)]
    if genes.empty:
        return EarlierTissues()
    kept = sorted(genes.tissue.unique())
    before = load_config(out / "config.yaml").to_dict() if (out / "config.yaml").is_file() else {}
    now = config.to_dict()
    for section in COMPARED:
        changed = [key for key in now[section] if before.get(section, {}).get(key) != now[section][key]]
        if changed:
            raise InputError(
                f"{out} holds tissues ({', '.join(kept)}) swept with another {section}.{changed[0]} "
                f"({before.get(section, {}).get(changed[0])!r}, now {now[section][changed[0]]!r}); "
                "pass --fresh to start the folder over, or --out for a new one")
    rankings = None
    if (out / "rankings.parquet").is_file():
        rankings = read_parquet(out / "rankings.parquet")
        if not {"cluster", "gene_symbol"} <= set(rankings.columns):
            raise InputError(f"{out} was written by an earlier version of this tool; pass --fresh "
                             "to start the folder over, or --out for a new one")
        rankings = rankings[rankings.tissue.isin(kept)].reset_index(drop=True)
        rankings["tissue"] = rankings.tissue.cat.remove_unused_categories()
    named = re.compile("|".join(rf"{re.escape(tissue)}_c\d+_r\d+_" for tissue in kept))
    models = sorted(p for p in (out / "models").glob("*.npz") if named.match(p.name))
    if any(re.search(r"_r\d+_lam[\d.e+-]+\.npz$", p.name) for p in models):  # before trials were named lambda
        raise InputError(f"{out} was written by an earlier version of this tool (models named "
                         "_lam<λ>); pass --fresh to start the folder over, or --out for a new one")
    return EarlierTissues(kept, genes.reset_index(drop=True), rankings, models)


def stale_rankings(out: Path) -> list[Path]:
    """Rankings of other λ (`rank --lambda`): they describe an earlier sweep's models."""
    return sorted(p for pattern in ("rankings_lambda*.parquet", "network_lambda*.csv",
                                    "evaluation_lambda*.csv") for p in Path(out).glob(pattern))


def used_trials(selected: pd.DataFrame) -> list[Trial]:
    """The trials whose models the results use: per group, the selected configuration
    and λ = 0 at its settings (when that has a result)."""
    trials = []
    for row in selected.to_dict("records"):
        trials.append(Trial.from_config(row))
        if row["lambda"] != 0 and pd.notna(row.get("lambda0_mean_val_r2")):
            trials.append(trials[-1].at(0.0))
    return trials


def stage_models(selected: pd.DataFrame, baselines: dict[tuple[tuple, str], BaselineFit], experiment: str,
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
