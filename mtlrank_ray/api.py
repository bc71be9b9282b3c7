"""The Python entry points, for notebooks: what `python tune.py` and `mtlrank-ray`
do, with errors raised (`InputError`, one line) instead of exit statuses.

    import mtlrank_ray
    store = mtlrank_ray.prepare(adata, tf_list="tf_list.csv", id_map="ensembl_to_symbol.csv",
                                tissue="Pancreas", out="runs/pancreas")
    results = mtlrank_ray.tune(store.data_root, config={"search": {"replicates": 1}},
                               out="runs/pancreas")
    results.gene_r2, results.network, results.evaluation

`data` is a data root (a folder holding data/, as README's "Data layout"
describes), an .h5ad file or an AnnData object written by scVelo: the last two
are written into `<out>/input/` with the TF list and id mapping, as one tissue.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from .config import config_from_dict, load_config
from .data.references import ID_MAP, TF_LIST
from .data.store import read_parquet, write_atomically
from .errors import InputError


@dataclass
class Prepared:
    """An aligned store and what `prepare` did to each tissue."""
    store: str
    data_root: Path
    tissues: pd.DataFrame  # tissue, status, reason, cells, tfs, genes, clusters

    def load(self, tissue: str):
        """One tissue's aligned arrays (`AlignedTissue`)."""
        from .data import load_tissue
        return load_tissue(self.store, tissue)


def prepare(data, tf_list=None, id_map=None, config: dict | str | Path | None = None,
            out: str | Path = "runs/default", tissue: str = "Tissue", tissues: str = "all") -> Prepared:
    """Align and check the input into `<out>/store` (as `python tune.py` does first)."""
    from .data import prepare_store

    settings = _config(config)
    root = _data_root(data, tf_list, id_map, Path(out), tissue)
    store = settings.run.store(out)
    reports = prepare_store(root, settings, store, tissues)
    table = pd.DataFrame([{"tissue": r.tissue, "status": r.status, "reason": r.reason, **r.shapes}
                          for r in reports])
    return Prepared(store, root, table)


def tune(data, config: dict | str | Path | None = None, out: str | Path = "runs/default",
         tissues: str = "all", resume: bool = False, fresh: bool = False,
         address: str | None = None, tf_list=None, id_map=None, tissue: str = "Tissue") -> Results:
    """Prepare, sweep and write the results into `out`, exactly as `python tune.py`;
    returns them. A sweep interrupted (Ctrl-C, the notebook's stop button) goes on
    with `resume=True`."""
    import ray

    from .cli import tune_parser

    if ray.is_initialized():
        raise InputError("Ray is already running in this Python process (ray.init was called); "
                         "call ray.shutdown() first: mtlrank_ray.tune starts and stops its own "
                         "(address='auto' joins a running cluster)")
    root = _data_root(data, tf_list, id_map, Path(out), tissue)
    with tempfile.TemporaryDirectory() as folder:
        # Not -q: a notebook shows the phase lines and the sweep's bar (the package's
        # INFO log stays off: no logging.basicConfig here, unlike the command line).
        argv = ["--data", str(root), "--out", str(out), "--tissue", tissues]
        if config is not None:
            path = Path(config) if isinstance(config, (str, Path)) else Path(folder) / "config.yaml"
            if isinstance(config, dict):  # checked here, before anything runs
                path.write_text(yaml.safe_dump(_config(config).to_dict()))
            argv += ["--config", str(path)]
        argv += ["--resume"] * resume + ["--fresh"] * fresh + (["--address", address] if address else [])
        args = tune_parser().parse_args(argv)
        args.argv = argv
        args.run(args)
    return load_results(out)


@dataclass
class Results:
    """A finished run folder's tables, read when asked for."""
    out: Path

    def _read(self, name: str) -> pd.DataFrame | None:
        path = self.out / name
        if not path.is_file():
            return None
        return read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path, keep_default_na=False)

    @property
    def gene_r2(self) -> pd.DataFrame:
        """Per gene and model (each λ, the lasso, GRNBoost2): validation and test R²."""
        return read_parquet(self.out / "gene_r2.parquet")

    @property
    def selected(self) -> pd.DataFrame:
        """The configuration chosen on validation per (tissue, cluster, replicate)."""
        return pd.read_csv(self.out / "selected.csv")

    @property
    def network(self) -> pd.DataFrame | None:
        """The consensus network: tissue, gene, tf (ids and symbols), mean rank."""
        return self._read("network.csv")

    @property
    def rankings(self) -> pd.DataFrame | None:
        return self._read("rankings.parquet")

    @property
    def evaluation(self) -> pd.DataFrame | None:
        """Rankings against the planted truth or the last `evaluate` reference."""
        return self._read("evaluation.csv")

    def evaluate(self, reference: str | Path, k: int = 10) -> pd.DataFrame:
        """Every ranking method against a reference network (see `evaluation`)."""
        from .analysis.evaluation import evaluate_run
        return evaluate_run(self.out, Path(reference), k=k)

    @property
    def report(self) -> Path:
        return self.out / "report" / "index.html"


def load_results(out: str | Path) -> Results:
    """The results `python tune.py --out OUT` wrote."""
    out = Path(out)
    if not (out / "gene_r2.parquet").is_file():
        raise InputError(f"{out} holds no results (no gene_r2.parquet); run the sweep into it first.")
    return Results(out)


def _config(config):
    if config is None:
        return config_from_dict({})
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(Path(config))


def _data_root(data, tf_list, id_map, out: Path, tissue: str) -> Path:
    """A data root for `data`: as it is when it is one, else written into out/input/."""
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        return Path(data)
    if isinstance(data, (str, Path)) and not Path(data).is_file():
        raise InputError(f"{data} does not exist; pass a data root, an .h5ad file or an AnnData object.")
    if tf_list is None or id_map is None:
        raise InputError("an .h5ad file or AnnData object needs tf_list= and id_map= (CSV paths or "
                         "DataFrames; README, 'Data layout')")
    root = out / "input"
    target = root / "data" / "h5ad" / tissue / "cells.h5ad"
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file is linked, not copied (scVelo output can be several GB); an object is written.
    write = ((lambda p: os.symlink(Path(data).resolve(), p)) if isinstance(data, (str, Path))
             else (lambda p: data.write_h5ad(p)))
    write_atomically(target, write)
    for table, where in ((tf_list, TF_LIST), (id_map, ID_MAP)):
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        write = ((lambda p, t=table: t.to_csv(p)) if isinstance(table, pd.DataFrame)
                 else (lambda p, t=table: shutil.copyfile(t, p)))
        write_atomically(root / where, write)
    return root
