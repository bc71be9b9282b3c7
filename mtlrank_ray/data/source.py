"""What every input format yields for one tissue, and how cells are matched.

Two formats are read (see README, "Data layout"): the seed notebook's HDF5 and
CSV files (`seed_layout`) and scVelo `.h5ad` files (`scvelo`). Each turns a
tissue into one `TissueInputs`: TF inputs, velocity and the target
(`data.target`) over the same cells, matched by barcode, in the expression
file's cell order (the order the notebook splits cells in). Velocity picks the
genes whatever the target (less the TFs for an abundance target, `genes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass
class TissueInputs:
    name: str
    barcodes: np.ndarray  # aligned cells, in expression order
    expression: pd.DataFrame  # cells x TFs from the TF list, log-scaled, float32 (data.tf_input)
    expression_genes: pd.Index  # every gene id of the expression matrix
    velocity: pd.DataFrame  # cells x velocity genes, NaN where there is none
    target: pd.DataFrame  # cells x the same genes: data.target's values (velocity itself by default)
    velocity_file: str  # named in messages about genes
    activity: tuple[pd.DataFrame, pd.DataFrame] | None  # (mean, sum): gene x TF symbols


class Source(Protocol):
    """An input format: which tissues it holds and how to load one."""

    def tissues(self) -> list[str]: ...

    def input_files(self, tissue: str) -> list[Path]: ...

    def load(self, tissue: str, tf_ids: pd.Index) -> TissueInputs: ...


def check_unique(ids: np.ndarray, what: str, where: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise InputError(f"{where}: {len(dup)} duplicate {what} (e.g. {dup[0]!r}); "
                         f"each must appear once. Remove or rename the duplicates.")


def align_cells(expr_barcodes: np.ndarray, velo_barcodes: np.ndarray, min_overlap: float,
                tissue: str, expr_file: str, velo_file: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into expression and velocity that pair up equal barcodes.

    Cells keep the expression order. Cells present in only one file are
    dropped with a warning; if fewer than `min_overlap` of the smaller file's
    cells match, the files are not describing the same cells and this fails.
    """
    velo_pos = pd.Index(velo_barcodes).get_indexer(expr_barcodes)
    expr_rows = np.flatnonzero(velo_pos >= 0)
    n_common, smaller = len(expr_rows), min(len(expr_barcodes), len(velo_barcodes))
    if smaller == 0 or n_common < min_overlap * smaller:
        raise InputError(
            f"tissue {tissue}: only {n_common} of {len(expr_barcodes)} expression barcodes "
            f"({expr_file}) match the {len(velo_barcodes)} velocity barcodes ({velo_file}). "
            "Both files must describe the same cells with the same barcode spelling; "
            "check the tissue's groups, or lower data.min_barcode_overlap if this is expected.")
    dropped = len(expr_barcodes) + len(velo_barcodes) - 2 * n_common
    if dropped:
        log.warning("tissue %s: %d cells appear in only one of %s and %s and are left out; "
                    "%d cells are used", tissue, dropped, expr_file, velo_file, n_common)
    return expr_rows, velo_pos[expr_rows]


def scale_expression(values: np.ndarray, where: str, already_log: bool = False) -> np.ndarray:
    """log10(x + 1) as the notebook computes it (in the file's precision), after
    checking the raw values; values already log-scaled are only checked."""
    if not np.isfinite(values).all():
        raise InputError(f"{where}: expression holds {np.count_nonzero(~np.isfinite(values))} "
                         "NaN or infinite values; expression must be finite. Fix or drop "
                         "those cells before preparing.")
    if already_log:
        return values
    if (values < 0).any():
        raise InputError(f"{where}: expression holds negative values; raw RPKM (or counts) "
                         "must be at least 0. If the values are already log-scaled, say so "
                         "in the config (data.expression_is_log: true, h5ad input only).")
    return np.log10(values + 1)
