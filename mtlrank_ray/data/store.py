"""The aligned store: one folder per tissue, Parquet files and a manifest.

    STORE/<tissue>/expression.parquet     cells x TFs, float32, index barcode
    STORE/<tissue>/target.parquet         cells x selected genes, float32, NaN kept: what
                                          the networks predict (data.target), index
                                          barcode, columns in selection order
    STORE/<tissue>/activity_mean.parquet  genes x TFs, float32, index gene
    STORE/<tissue>/activity_sum.parquet   genes x TFs, float32 (log2(x + 1)), index gene
    STORE/<tissue>/genes.parquet          gene, cluster, n_cells (selection order)
    STORE/<tissue>/tfs.parquet            tf, symbol, has_activity (column order)
    STORE/<tissue>/manifest.json          shapes, input checksums, settings, config,
                                          package versions, fingerprint

STORE is a local folder or a URI such as s3://bucket/prefix (any filesystem
pyarrow opens from a URI; S3 endpoint and credentials come from the standard
AWS variables). A tissue is written whole into a local staging folder first.
Locally it is renamed into place, so a reader sees the old tissue or the new
one, never a mix. On object storage, which has no rename, the old manifest is
deleted first and the new one uploaded last: a tissue without a manifest is
not a tissue, so a reader sees the old tissue, the new one or none, and the
next `prepare` rebuilds one that an interrupted upload left without. The
fingerprint covers the input files' checksums and the settings that shape the
tissue; a tissue whose fingerprint matches is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import InputError

FORMAT_VERSION = 2  # 2: the predicted matrix is target.parquet (data.target)
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
    n_cells: np.ndarray  # (G,) cells with a target value
    expression: np.ndarray  # (cells, T) float32, log-scaled
    target: np.ndarray  # (cells, G) float32, NaN kept: data.target's values
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


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a local folder or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def put_file(location: str, payload: bytes) -> None:
    """Write `payload` as the file at `location` (a path or a URI) whole or not at all:
    in a folder by a rename, on object storage by one upload, which appears at close."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda temporary: Path(temporary).write_bytes(payload))
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as handle:
        handle.write(payload)


def read_file(location: str) -> bytes:
    """The bytes of the file at `location` (a path or a URI)."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as handle:
        return handle.read()


def fetch_files(pairs: list[tuple[str, Path]], threads: int = 16) -> list[str]:
    """Copy each (location, local path) pair, many at once (object storage serves
    parallel requests); returns the locations that do not exist."""
    def fetch(pair: tuple[str, Path]) -> str | None:
        fs, path = filesystem(pair[0])
        try:
            with fs.open_input_stream(path) as handle:
                pair[1].write_bytes(handle.read())
        except FileNotFoundError:
            return pair[0]
        return None

    with ThreadPoolExecutor(threads) as pool:
        return [missing for missing in pool.map(fetch, pairs) if missing]


def read_manifest(store: str | Path, tissue: str) -> dict | None:
    fs, root = filesystem(store)
    try:
        with fs.open_input_stream(f"{root}/{tissue}/{MANIFEST}") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None
    except ValueError:  # a damaged manifest: the tissue is rebuilt
        return None


def is_current(store: str | Path, tissue: str, manifest: dict | None, fingerprint: str) -> bool:
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return False
    fs, root = filesystem(store)
    infos = fs.get_file_info([f"{root}/{tissue}/{name}" for name in manifest.get("files", {}).values()])
    return all(info.type == pafs.FileType.File for info in infos)


def write_tissue(folder: Path, tissue: AlignedTissue, manifest: dict) -> None:
    """Write every file of one tissue into `folder` (a fresh staging folder)."""
    folder.mkdir(parents=True)
    cells = pd.Index(tissue.barcodes, name="barcode")
    genes = pd.Index(tissue.genes, name="gene")
    tables = {
        "expression": pd.DataFrame(tissue.expression, index=cells, columns=tissue.tfs),
        "target": pd.DataFrame(tissue.target, index=cells, columns=tissue.genes),
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


def publish(staged: Path, store: str | Path, tissue: str) -> None:
    """Put a tissue staged locally into the store (see the module's docstring)."""
    if not is_uri(store):
        install(staged, Path(store) / tissue)
        return
    fs, root = filesystem(store)
    folder = f"{root}/{tissue}"
    if fs.get_file_info(f"{folder}/{MANIFEST}").type == pafs.FileType.File:
        fs.delete_file(f"{folder}/{MANIFEST}")
    fs.create_dir(folder)
    for path in sorted(staged.iterdir(), key=lambda p: p.name == MANIFEST):  # manifest last
        pafs.copy_files(str(path), f"{folder}/{path.name}", destination_filesystem=fs)
    shutil.rmtree(staged)


def remove_leftovers(store: Path) -> None:
    """Staging and retired folders a killed run left behind in a local store (one
    writer at a time)."""
    for path in store.glob(".staging-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in store.glob(".retired-*"):
        shutil.rmtree(path, ignore_errors=True)


def store_tissues(store: str | Path) -> list[str]:
    fs, root = filesystem(store)
    try:
        folders = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    names = [info.base_name for info in folders
             if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")]
    return sorted(name for name in names if read_manifest(store, name) is not None)


def load_tissue(store: str | Path, tissue: str) -> AlignedTissue:
    """Read one tissue of an aligned store (a folder or a URI) back into arrays."""
    manifest = read_manifest(store, tissue)
    if manifest is None:
        raise InputError(f"{store} holds no prepared tissue '{tissue}' (it has: "
                         f"{', '.join(store_tissues(store)) or 'none'}); run "
                         "`mtlrank-ray prepare` for it first.")
    fs, root = filesystem(store)

    def read(name: str) -> pd.DataFrame:
        return read_parquet(f"{root}/{tissue}/{name}.parquet", filesystem=fs)

    frame = read("expression")
    expression = aligned_empty(frame.shape)
    expression[...] = frame.to_numpy()
    genes, tfs = read("genes"), read("tfs")
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
        # format 1 (before data.target) kept velocity, its only target, as velocity.parquet
        target=read("target" if manifest.get("format", 1) >= 2 else "velocity").to_numpy(np.float32),
        activity_mean=read("activity_mean").to_numpy(np.float32),
        activity_sum=read("activity_sum").to_numpy(np.float32),
    )


def read_table(source, columns: list[str] | None = None,
               filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """A parquet file (a path, or a path on `filesystem`, or a file object), read whole.

    Not `pd.read_parquet` or `pq.read_table` on a file object: those scan through
    pyarrow's dataset layer, whose background tasks outlive the call and need the
    GIL to finish reading a Python file object (pandas opens one even for a local
    path). A process that exits meanwhile aborts, "terminate called without an
    active exception" (apache/arrow#34314, #45017): in 18-24 of 30 short scripts
    here, pyarrow 26. ParquetFile reads on the calling thread: nothing is left
    running."""
    with pq.ParquetFile(source, filesystem=filesystem) as parquet:
        return parquet.read(columns=columns, use_pandas_metadata=True)


def read_parquet(source, columns: list[str] | None = None,
                 filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    """`read_table` as a frame, its pandas index restored."""
    return read_table(source, columns, filesystem).to_pandas()


def write_atomically(path: Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename it into place."""
    temporary = sibling(Path(path), "tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
