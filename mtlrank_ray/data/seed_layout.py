"""The seed notebook's files, read as it reads them.

    DIR/data/processed/rpkm/rpkm.hdf5     per tissue group: exp (cells x genes,
                                          raw RPKM), barcode, ensembl
    DIR/data/processed/velo/velo.hdf5     per tissue group: velo (cells x genes,
                                          NaN where scVelo gave none), barcode, ensembl
    DIR/data/tf_activity/{mean_tf,sum_tf}/<Tissue>_<suffix>.csv

Tissue keys are the HDF5 group names; every tissue must have all three. The
expression matrix is read in row chunks, and only its TF columns: the whole
matrix (cells x all genes) can be far larger than memory.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import InputError
from .activity import find_activity_files, read_activity
from .source import TissueInputs, align_cells, check_unique, scale_expression

log = logging.getLogger(__name__)

RPKM = Path("data/processed/rpkm/rpkm.hdf5")
VELO = Path("data/processed/velo/velo.hdf5")
MEAN_TF = Path("data/tf_activity/mean_tf")
SUM_TF = Path("data/tf_activity/sum_tf")
ROWS_PER_READ = 1024  # bounds one read to 1024 cells x all genes


@contextlib.contextmanager
def open_hdf5(path: Path):
    """h5py.File whose read failures name the file and what to do."""
    if not path.is_file():
        raise InputError(f"{path} does not exist; the seed layout needs it (see README, "
                         "'Data layout').")
    try:
        with h5py.File(path, "r") as handle:
            yield handle
    except OSError as exc:
        raise InputError(f"{path} cannot be read as HDF5 ({exc}); the file is truncated or "
                         "corrupt: copy or export it again.") from None


class SeedLayout:
    """The `Source` for the notebook's HDF5 + CSV layout under a data root."""

    def __init__(self, root: Path, min_barcode_overlap: float, target: str = "velocity"):
        self.root = root
        self.rpkm, self.velo = root / RPKM, root / VELO
        self.min_barcode_overlap = min_barcode_overlap
        self.target = target  # "velocity" or "expression": the layout holds no other
        self.activity = find_activity_files(root / MEAN_TF, root / SUM_TF)

    def tissues(self) -> list[str]:
        """Every tissue key found in any input; `load` checks each has all parts."""
        keys = set(self.activity)
        for path in (self.rpkm, self.velo):
            with open_hdf5(path) as handle:
                keys |= set(handle.keys())
        return sorted(keys)

    def input_files(self, tissue: str) -> list[Path]:
        files = [self.rpkm, self.velo]
        if tissue in self.activity:
            files += [self.activity[tissue].mean, self.activity[tissue].sum]
        return files

    def load(self, tissue: str, tf_ids: pd.Index) -> TissueInputs:
        if tissue not in self.activity:
            raise InputError(f"tissue {tissue} has no activity files in {self.root / MEAN_TF} "
                             f"and {self.root / SUM_TF}; add <{tissue}>_<suffix>.csv to both, or leave the "
                             "tissue out with --tissue.")
        with open_hdf5(self.rpkm) as rpkm, open_hdf5(self.velo) as velo:
            expr_barcodes, expr_genes, exp = _group(rpkm, tissue, "exp", self.rpkm)
            velo_barcodes, velo_genes, vel = _group(velo, tissue, "velo", self.velo)
            expr_rows, velo_rows = align_cells(expr_barcodes, velo_barcodes,
                                               self.min_barcode_overlap, tissue,
                                               str(self.rpkm), str(self.velo))
            tf_cols = np.flatnonzero(pd.Index(expr_genes).isin(tf_ids))
            log.info("tissue %s: reading %d cells: %d TF columns of %d expression genes, "
                     "%d velocity genes",
                     tissue, len(expr_rows), len(tf_cols), exp.shape[1], vel.shape[1])
            where = f"{self.rpkm} [{tissue}/exp]"
            expression = _read_rows(exp, expr_rows, tf_cols, lambda v: scale_expression(v, where))
            velocity = _read_rows(vel, velo_rows, np.arange(vel.shape[1]), _check_velocity(
                f"{self.velo} [{tissue}/velo]"))
            if self.target == "expression":  # velocity genes without expression are never picked
                present = pd.Index(velo_genes).isin(expr_genes)
                columns = pd.Index(expr_genes).get_indexer(velo_genes[present])
                target = np.full(velocity.shape, np.nan, np.float32)
                target[:, present] = _read_rows(exp, expr_rows, columns, lambda v: scale_expression(v, where))
            else:
                target = velocity
        return TissueInputs(
            name=tissue,
            barcodes=expr_barcodes[expr_rows],
            expression=pd.DataFrame(expression.astype(np.float32, copy=False),
                                    columns=pd.Index(expr_genes[tf_cols])),
            expression_genes=pd.Index(expr_genes),
            velocity=pd.DataFrame(velocity, columns=pd.Index(velo_genes)),
            target=pd.DataFrame(target, columns=pd.Index(velo_genes)),
            velocity_file=str(self.velo),
            activity=read_activity(self.activity[tissue]),
        )


def _group(handle: h5py.File, tissue: str, matrix: str, path: Path):
    """Barcodes, gene ids and the matrix dataset of one tissue group, checked."""
    if tissue not in handle:
        raise InputError(f"{path} has no group '{tissue}' (it has: {', '.join(handle.keys())}); "
                         "every tissue needs an rpkm group, a velo group and activity files: "
                         "add the group, or leave the tissue out with --tissue.")
    group = handle[tissue]
    for key in (matrix, "barcode", "ensembl"):
        if key not in group:
            raise InputError(f"{path} [{tissue}] has no dataset '{key}'; each tissue group "
                             f"needs {matrix}, barcode and ensembl.")
    barcodes, genes = _strings(group["barcode"]), _strings(group["ensembl"])
    data = group[matrix]
    if data.shape != (len(barcodes), len(genes)):
        raise InputError(f"{path} [{tissue}/{matrix}] is {data.shape[0]} x {data.shape[1]} but "
                         f"there are {len(barcodes)} barcodes and {len(genes)} ensembl ids; it "
                         "must be cells x genes.")
    check_unique(barcodes, "barcodes", f"{path} [{tissue}]")
    check_unique(genes, "gene ids", f"{path} [{tissue}]")
    return barcodes, genes, data


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    """Fixed- or variable-length byte strings (or numbers) as str."""
    if dataset.dtype.kind in "SO":
        return dataset.asstr()[()].astype(str)
    return dataset[()].astype(str)


def _read_rows(data: h5py.Dataset, rows: np.ndarray, cols: np.ndarray, transform) -> np.ndarray:
    """data[rows][:, cols], transformed, read in contiguous row chunks."""
    # Integer counts become float64, as numpy does for the notebook's log10.
    out = np.empty((len(rows), len(cols)), data.dtype if data.dtype.kind == "f" else np.float64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for start in range(0, len(rows), ROWS_PER_READ):
        chunk_rows = sorted_rows[start:start + ROWS_PER_READ]
        block = data[chunk_rows[0]:chunk_rows[-1] + 1][chunk_rows - chunk_rows[0]][:, cols]
        out[order[start:start + ROWS_PER_READ]] = transform(block)
    return out


def _check_velocity(where: str):
    def check(block: np.ndarray) -> np.ndarray:
        if np.isinf(block).any():
            raise InputError(f"{where}: velocity holds infinite values; use NaN for cells "
                             "without velocity.")
        return block
    return check
