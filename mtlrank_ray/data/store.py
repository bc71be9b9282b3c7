"""The aligned store: one folder per tissue, Parquet files and a manifest.

    STORE/<tissue>/expression.parquet     cells x TFs, float32, index barcode
    STORE/<tissue>/velocity.parquet       cells x selected genes, float32, NaN kept,
                                          index barcode, columns in selection order
    STORE/<tissue>/activity_mean.parquet  genes x TFs, float32, index gene
    STORE/<tissue>/activity_sum.parquet   genes x TFs, float32 (log2(x + 1)), index gene
    STORE/<tissue>/genes.parquet          gene, cluster, n_cells (selection order)
    STORE/<tissue>/tfs.parquet            tf, symbol, has_activity (column order)
    STORE/<tissue>/manifest.json          shapes, input checksums, settings, config,
                                          package versions, fingerprint

A tissue folder is written whole into a staging folder and renamed into
place, so a reader sees the old tissue or the new one, never a mix. The
fingerprint covers the input files' checksums and the settings that shape
the tissue; a tissue whose fingerprint matches is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PACKAGES = ("mtlrank-ray", "numpy", "pandas", "pyarrow", "h5py", "anndata", "scikit-learn",
            "k-means-constrained")
ROW_GROUP_CELLS = 8192  # Parquet row groups: the unit a reader (Ray Data too) can split on
ALIGNMENT = 64  # bytes: what TensorFlow's CPU kernels require to use a buffer in place


@dataclass
class AlignedTissue:
    name: str
    barcodes: np.ndarray  # (cells,)
    tfs: pd.Index  # (T,) Ensembl ids, the notebook's order
    tf_symbols: np.ndarray  # (T,) symbol from the id mapping, "" if none
    tf_has_activity: np.ndarray  # (T,) bool
    genes: pd.Index  # (G,) Ensembl ids, selection order
    clusters: np.ndarray  # (G,) int
    n_cells: np.ndarray  # (G,) cells with velocity
    expression: np.ndarray  # (cells, T) float32, log-scaled
    velocity: np.ndarray  # (cells, G) float32, NaN kept
    activity_mean: np.ndarray  # (G, T) float32
    activity_sum: np.ndarray  # (G, T) float32

    def shapes(self) -> dict[str, int]:
        return {"cells": len(self.barcodes), "tfs": len(self.tfs), "genes": len(self.genes),
                "clusters": int(len(np.unique(self.clusters)))}


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialized C-ordered array whose data starts on a 64-byte boundary,
    so the trainer can hand it to TensorFlow without a copy."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        with open(path, "rb") as handle:
            cache[path] = hashlib.file_digest(handle, "sha256").hexdigest()
    return cache[path]


def fingerprint(inputs: dict[str, str], settings: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "inputs": inputs, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_current(folder: Path, manifest: dict | None, fingerprint: str) -> bool:
    return (manifest is not None and manifest.get("fingerprint") == fingerprint
            and all((folder / name).is_file() for name in manifest.get("files", {}).values()))


def write_tissue(folder: Path, tissue: AlignedTissue, manifest: dict) -> None:
    """Write every file of one tissue into `folder` (a fresh staging folder)."""
    folder.mkdir(parents=True)
    cells = pd.Index(tissue.barcodes, name="barcode")
    genes = pd.Index(tissue.genes, name="gene")
    tables = {
        "expression": pd.DataFrame(tissue.expression, index=cells, columns=tissue.tfs),
        "velocity": pd.DataFrame(tissue.velocity, index=cells, columns=tissue.genes),
        "activity_mean": pd.DataFrame(tissue.activity_mean, index=genes, columns=tissue.tfs),
        "activity_sum": pd.DataFrame(tissue.activity_sum, index=genes, columns=tissue.tfs),
        "genes": pd.DataFrame({"gene": tissue.genes, "cluster": tissue.clusters,
                               "n_cells": tissue.n_cells}),
        "tfs": pd.DataFrame({"tf": tissue.tfs, "symbol": tissue.tf_symbols,
                             "has_activity": tissue.tf_has_activity}),
    }
    for name, table in tables.items():
        table.to_parquet(folder / f"{name}.parquet", index=name not in ("genes", "tfs"),
                         row_group_size=ROW_GROUP_CELLS)
    manifest = {**manifest, "shapes": tissue.shapes(),
                "files": {name: f"{name}.parquet" for name in tables}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def sibling(path: Path, tag: str) -> Path:
    """An unused hidden path beside `path`, for staging; files and folders made there
    get the user's usual permissions (mkstemp/mkdtemp would make them private)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def install(staged: Path, target: Path) -> None:
    """Put a staged tissue folder in place of `target` by renames."""
    if target.exists():
        retired = target.with_name(f".retired-{target.name}-{uuid.uuid4().hex[:8]}")  # see remove_leftovers
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired)
    else:
        staged.rename(target)


def remove_leftovers(store: Path) -> None:
    """Staging and retired folders a killed run left behind (one writer at a time)."""
    for path in store.glob(".staging-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in store.glob(".retired-*"):
        shutil.rmtree(path, ignore_errors=True)


def store_tissues(store: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(store).glob(f"*/{MANIFEST}")
                  if not p.parent.name.startswith("."))


def load_tissue(store: str | Path, tissue: str) -> AlignedTissue:
    """Read one tissue of an aligned store back into arrays."""
    folder = Path(store) / tissue
    if read_manifest(folder) is None:
        raise InputError(f"{store} holds no prepared tissue '{tissue}' (it has: "
                         f"{', '.join(store_tissues(Path(store))) or 'none'}); run "
                         "`mtlrank-ray prepare` for it first.")
    frame = pd.read_parquet(folder / "expression.parquet")
    expression = aligned_empty(frame.shape)
    expression[...] = frame.to_numpy()
    velocity = pd.read_parquet(folder / "velocity.parquet")
    genes = pd.read_parquet(folder / "genes.parquet")
    tfs = pd.read_parquet(folder / "tfs.parquet")
    return AlignedTissue(
        name=tissue,
        barcodes=frame.index.to_numpy(),
        tfs=pd.Index(tfs["tf"]),
        tf_symbols=tfs["symbol"].to_numpy(),
        tf_has_activity=tfs["has_activity"].to_numpy(),
        genes=pd.Index(genes["gene"]),
        clusters=genes["cluster"].to_numpy(),
        n_cells=genes["n_cells"].to_numpy(),
        expression=expression,
        velocity=velocity.to_numpy(np.float32),
        activity_mean=pd.read_parquet(folder / "activity_mean.parquet").to_numpy(np.float32),
        activity_sum=pd.read_parquet(folder / "activity_sum.parquet").to_numpy(np.float32),
    )


def write_atomically(path: Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename it into place."""
    temporary = sibling(Path(path), "tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
