"""`prepare`: input files -> aligned store, one tissue at a time.

Per tissue: load and match cells (source), select genes and cluster them
(genes), order TFs and build the activity matrices (activity), write
(store). Every requested tissue is built into a staging folder first; only
when all of them succeeded are they renamed into the store, so a bad input
leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import InputError
from . import store
from .activity import activity_matrices, tf_order
from .genes import cluster_genes, select_genes
from .references import (
    ID_MAP,
    LASSO,
    TF_LIST,
    normalize_tissue,
    read_id_map,
    read_lasso,
    read_tf_list,
)
from .scvelo import H5AD_DIR, ScveloFiles
from .seed_layout import RPKM, VELO, SeedLayout
from .source import Source, TissueInputs

log = logging.getLogger(__name__)



@dataclass
class TissueReport:
    tissue: str
    status: str  # "built" or "reused"
    reason: str
    shapes: dict[str, int]


def open_source(root: Path, config: Config) -> Source:
    fmt = config.data.format
    scvelo_only = config.data.target in ("unspliced", "spliced") or config.data.tf_input == "smoothed"
    if fmt == "auto":
        if scvelo_only and (root / H5AD_DIR).is_dir():
            fmt = "h5ad"  # what only scVelo's layers hold (the demo has both layouts)
        elif (root / RPKM).exists() or (root / VELO).exists():
            fmt = "seed"
        elif (root / H5AD_DIR).is_dir():
            fmt = "h5ad"
        else:
            raise InputError(f"{root} holds neither the seed layout ({RPKM}, {VELO}) nor "
                             f"scVelo files ({H5AD_DIR}/<Tissue>/); see README, 'Data layout'. "
                             "`mtlrank-ray demo-data DIR` writes an example.")
    if fmt == "seed":
        data = config.data
        needs = [key for key, value, seed_has in (("data.target", data.target, ("velocity", "expression")),
                                                  ("data.tf_input", data.tf_input, ("expression",)))
                 if value not in seed_has]
        if needs:
            raise InputError(f"{needs[0]} {getattr(data, needs[0].split('.')[1])} needs scVelo's "
                             f"smoothed layers (Ms, Mu), which the seed layout ({root / RPKM}, "
                             f"{root / VELO}) does not hold; use .h5ad input ({H5AD_DIR}/<Tissue>/) "
                             "or data.target velocity or expression with data.tf_input expression.")
        return SeedLayout(root, data.min_barcode_overlap, data.target)
    return ScveloFiles(root, config.data)


def read_as(root: Path, config: Config, source: SeedLayout | ScveloFiles) -> str:
    """What of `root` is read, and what is not where it holds both layouts (the demo does)."""
    if isinstance(source, ScveloFiles):
        return f"reading the scVelo files ({H5AD_DIR}/<Tissue>/)"
    other = (f"; the scVelo files in {root / H5AD_DIR} are not read (data.format: h5ad reads them)"
             if config.data.format == "auto" and (root / H5AD_DIR).is_dir() else "")
    return f"reading the seed layout ({RPKM}, {VELO}){other}"


def existing_root(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist; pass the folder that holds "
                         "data/ (and optionally results/).")
    return root


def choose_tissues(requested: str, available: list[str]) -> list[str]:
    if requested == "all":
        return available
    chosen = [normalize_tissue(t.strip()) for t in requested.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in available]
    if unknown or not chosen:
        raise InputError(f"no tissue '{unknown[0] if unknown else requested}' in the data; "
                         f"tissues: {', '.join(available)} (or 'all').")
    return chosen


def selected_tissues(data_dir: str | Path, config: Config, tissues: str = "all") -> list[str]:
    """The tissue keys `prepare_store` would prepare, without preparing them."""
    return choose_tissues(tissues, open_source(existing_root(data_dir), config).tissues())


def prepare_store(data_dir: str | Path, config: Config, out: str | Path,
                  tissues: str = "all") -> list[TissueReport]:
    """Build the aligned store at `out`, a local folder or a URI (s3://bucket/prefix)."""
    root = existing_root(data_dir)
    source = open_source(root, config)
    log.info("data %s: %s", root, read_as(root, config, source))
    chosen = choose_tissues(tissues, source.tissues())
    id_map = read_id_map(root / ID_MAP)
    tf_ids = read_tf_list(root / TF_LIST, id_map)
    lasso = read_lasso(root / LASSO)
    references = [root / TF_LIST, root / ID_MAP] + ([root / LASSO] if lasso is not None else [])

    remote = store.is_uri(out)
    out = str(out) if remote else Path(out)
    created = [] if remote else [f for f in (out, *out.parents) if not f.exists()]  # deepest first
    if remote:
        staging = Path(tempfile.mkdtemp(prefix="mtlrank-staging-"))
    else:
        out.mkdir(parents=True, exist_ok=True)
        store.remove_leftovers(out)
        staging = out / f".staging-{uuid.uuid4().hex[:8]}"
    checksums: dict[Path, str] = {}
    reports, staged = [], []
    try:
        for tissue in chosen:
            inputs = {str(p.relative_to(root)): store.sha256(p, checksums)
                      for p in source.input_files(tissue) + references}
            settings = _settings(config, tissue, lasso_used=lasso is not None)
            fingerprint = store.fingerprint(inputs, settings)
            with _store_errors(out):
                existing = store.read_manifest(out, tissue)
                current = store.is_current(out, tissue, existing, fingerprint)
            if current:
                reports.append(TissueReport(tissue, "reused", "inputs and settings unchanged",
                                            existing["shapes"]))
                log.info("tissue %s: store is current, reused", tissue)
                continue
            reason = _what_changed(existing, inputs, settings)
            log.info("tissue %s: building (%s)", tissue, reason)
            started = time.perf_counter()
            aligned = build_tissue(source, tissue, tf_ids, id_map, lasso, config,
                                   lasso_file=str(root / LASSO))
            store.write_tissue(staging / tissue, aligned, {
                "tissue": tissue, "format": store.FORMAT_VERSION, "fingerprint": fingerprint,
                "inputs": inputs, "settings": settings, "lasso_list_used": lasso is not None,
                "config": config.to_dict(), "versions": store.package_versions(),
                "data_root": str(root.resolve()),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            })
            staged.append(tissue)
            reports.append(TissueReport(tissue, "built", reason, aligned.shapes()))
            log.info("tissue %s: %s in %.1f s", tissue, aligned.shapes(),
                     time.perf_counter() - started)
        with _store_errors(out):
            for tissue in staged:
                store.publish(staging / tissue, out, tissue)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # a refused first run leaves no empty run folder behind
            if any(folder.iterdir()):
                break
            folder.rmdir()
    return reports


@contextlib.contextmanager
def _store_errors(out: str | Path):
    """A storage error of a remote store (unreachable endpoint, missing bucket or
    credentials) becomes one line naming the store."""
    try:
        yield
    except OSError as exc:
        if not store.is_uri(out):
            raise
        raise InputError(f"cannot use the store at {out}: {str(exc).splitlines()[0]} (check the "
                         "bucket and AWS_ENDPOINT_URL / AWS credentials; README, 'Run on a "
                         "cluster')") from None


def load_inputs(source: Source, tissue: str, tf_ids: pd.Index, config: Config) -> TissueInputs:
    """A tissue's inputs, refused when fewer than data.min_tfs of the TF list are in them."""
    inputs = source.load(tissue, tf_ids)
    n_tfs = inputs.expression.shape[1]
    if n_tfs < config.data.min_tfs:
        raise InputError(
            f"tissue {tissue}: {n_tfs} of the {len(tf_ids)} TFs of the TF list ({TF_LIST}) are "
            f"genes of its expression ({inputs.velocity_file}), fewer than data.min_tfs "
            f"({config.data.min_tfs}); the TF list, the id mapping ({ID_MAP}) and the data must "
            "name genes of one species, by ids or by symbols the mapping knows.")
    return inputs


def build_tissue(source: Source, tissue: str, tf_ids: pd.Index, id_map: pd.DataFrame,
                 lasso: pd.DataFrame | None, config: Config, lasso_file: str) -> store.AlignedTissue:
    inputs = load_inputs(source, tissue, tf_ids, config)
    # An abundance target of a TF is (nearly) one of its own inputs: predicted from itself.
    own_inputs = inputs.expression.columns if config.data.target != "velocity" else pd.Index([])
    genes = select_genes(inputs.velocity, inputs.expression_genes, lasso, tissue, config.genes,
                         inputs.velocity_file, lasso_file, excluded=own_inputs)
    target = inputs.target[genes].to_numpy()
    log.info("tissue %s: clustering %d genes into %d balanced clusters", tissue, len(genes),
             config.genes.n_clusters)
    clusters = cluster_genes(target, config.genes.n_clusters, config.genes.seed)
    scored_symbols = inputs.activity[0].columns if inputs.activity else pd.Index([])
    tfs, scored = tf_order(inputs.expression.columns, id_map, scored_symbols)
    act_mean, act_sum = activity_matrices(genes, tfs, scored, id_map, inputs.activity)
    return store.AlignedTissue(
        name=tissue,
        barcodes=inputs.barcodes,
        tfs=tfs,
        tf_symbols=id_map["gene_symbol"].reindex(tfs).fillna("").astype(str).to_numpy(),
        tf_has_activity=tfs.isin(scored.index),
        genes=genes,
        clusters=clusters,
        n_cells=np.count_nonzero(~np.isnan(target), axis=0),
        expression=inputs.expression[tfs].to_numpy(np.float32),
        target=target.astype(np.float32),
        activity_mean=act_mean,
        activity_sum=act_sum,
    )


def _settings(config: Config, tissue: str, lasso_used: bool) -> dict:
    """The settings that shape one tissue's store (training settings do not)."""
    genes = config.genes
    return {
        "data": config.to_dict()["data"],
        "genes": {"n_genes": genes.n_genes, "min_cells": genes.min_cells_setting(tissue),
                  "min_cell_fraction": genes.min_cell_fraction,
                  "n_clusters": genes.n_clusters, "seed": genes.seed},
        "lasso_list_used": lasso_used,
        "versions": {k: store.package_versions()[k] for k in ("numpy", "k-means-constrained")},
    }


def _what_changed(existing: dict | None, inputs: dict, settings: dict) -> str:
    if existing is None:
        return "new"
    old_inputs, old_settings = existing.get("inputs", {}), _flat(existing.get("settings", {}))
    new_settings = _flat(settings)
    changed = [f"input {name}" for name in sorted(set(inputs) | set(old_inputs))
               if inputs.get(name) != old_inputs.get(name)]
    changed += [f"setting {key}" for key in sorted(set(new_settings) | set(old_settings))
                if new_settings.get(key) != old_settings.get(key)]
    return "changed: " + ", ".join(changed) if changed else "store format changed"


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
