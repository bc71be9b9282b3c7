"""scVelo output as input: `.h5ad` files, one or several per tissue.

    DIR/data/h5ad/<Tissue>/**/*.h5ad   (which files: data.h5ad_glob)

Each file holds cells of one sample: `layers['velocity']` with
`var['velocity_genes']` marking the genes scVelo fitted, and expression in X
or in the layer `data.expression_layer`, raw (log10(x + 1) is applied) or
already log-scaled (`data.expression_is_log`). A tissue's files are
concatenated by cells in sorted path order; with several files a barcode
becomes `<file path without .h5ad>:<obs name>` so samples never collide.
Var names are Ensembl ids (any version suffix ".5" removed) or gene symbols,
mapped to ids through the id mapping; names it does not know are left out and
counted in a warning. X and layers may be dense or sparse (CSR, CSC): only the
TF columns and the velocity genes are read, a block of rows at a time.
Activity files (the seed layout's `data/tf_activity/`) are optional: without
them activity is zero, and a warning says so.

What is read for the target and the TFs (`data.target`, `data.tf_input`):
velocity from `layers['velocity']`; unspliced and spliced abundance from
scVelo's smoothed `layers['Mu']` and `layers['Ms']` (`scv.pp.moments`), as
log10(x + 1) like expression; expression from X or `data.expression_layer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata.io import read_elem, sparse_dataset

from ..config import DataConfig
from ..errors import InputError
from .activity import find_activity_files, read_activity
from .references import ID_MAP, gene_ids, read_id_map
from .seed_layout import MEAN_TF, SUM_TF
from .source import TissueInputs, check_unique, scale_expression

log = logging.getLogger(__name__)

H5AD_DIR = Path("data/h5ad")
# data.target -> its layer (None: expression, X or data.expression_layer); the TFs'
# smoothed input is Ms. What writes each layer, for the message when one is missing.
TARGET_LAYERS = {"velocity": "velocity", "unspliced": "Mu", "spliced": "Ms", "expression": None}
SMOOTHED_TF_LAYER = "Ms"
WRITTEN_BY = {"velocity": "scvelo.tl.velocity", "Mu": "scvelo.pp.moments", "Ms": "scvelo.pp.moments"}


class ScveloFiles:
    """The `Source` for per-tissue folders of scVelo `.h5ad` files."""

    def __init__(self, root: Path, settings: DataConfig):
        self.root = root
        self.folder = root / H5AD_DIR
        self.settings = settings
        self.activity = find_activity_files(root / MEAN_TF, root / SUM_TF)
        self._id_map: pd.DataFrame | None = None  # read when var names are symbols

    def tissues(self) -> list[str]:
        """Every tissue with a folder or activity files; `load` checks each has files."""
        if not self.folder.is_dir():
            raise InputError(f"{self.folder} does not exist; scVelo input goes in "
                             f"{H5AD_DIR}/<Tissue>/ (see README, 'Data layout').")
        folders = {d.name for d in self.folder.iterdir() if d.is_dir()}
        return sorted(folders | set(self.activity))

    def _files(self, tissue: str) -> list[Path]:
        return sorted((self.folder / tissue).glob(self.settings.h5ad_glob))

    def input_files(self, tissue: str) -> list[Path]:
        files = self._files(tissue)
        if tissue in self.activity:
            files += [self.activity[tissue].mean, self.activity[tissue].sum]
        return files

    def load(self, tissue: str, tf_ids: pd.Index) -> TissueInputs:
        paths = self._files(tissue)
        if not paths:
            raise InputError(f"no files matching '{self.settings.h5ad_glob}' (data.h5ad_glob) in "
                             f"{self.folder / tissue}; add tissue {tissue}'s scVelo output there, "
                             "or leave the tissue out with --tissue.")
        samples = [self._read(path, tf_ids, prefix=len(paths) > 1) for path in paths]
        expression_genes = samples[0]["genes"]
        for sample in samples[1:]:
            expression_genes = expression_genes.intersection(sample["genes"], sort=False)
        tfs = expression_genes[expression_genes.isin(tf_ids)]
        velocity_genes = pd.Index(pd.unique(np.concatenate([s["velocity"].columns for s in samples])))
        if tissue in self.activity:
            activity = read_activity(self.activity[tissue])
        else:
            activity = None
            log.warning("tissue %s: no activity files in %s; activity scores are taken as 0, so "
                        "the model sees TF expression alone", tissue, self.root / MEAN_TF)
        barcodes = np.concatenate([s["barcodes"] for s in samples])
        velocity = pd.concat([s["velocity"].reindex(columns=velocity_genes) for s in samples],
                             ignore_index=True)
        check_unique(barcodes, "barcodes", f"tissue {tissue} ({self.folder / tissue})")
        return TissueInputs(
            name=tissue,
            barcodes=barcodes,
            expression=pd.concat([s["expression"][tfs] for s in samples], ignore_index=True),
            expression_genes=expression_genes,
            velocity=velocity,
            target=velocity if self.settings.target == "velocity" else pd.concat(
                [s["target"].reindex(columns=velocity_genes) for s in samples], ignore_index=True),
            velocity_file=", ".join(map(str, paths)),
            activity=activity,
        )

    def _read(self, path: Path, tf_ids: pd.Index, prefix: bool) -> dict:
        try:
            file = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(f"{path} cannot be read as .h5ad ({exc}); the file is truncated "
                             "or corrupt: copy or export it again.") from None
        with file:
            try:
                obs, var = read_elem(file["obs"]), read_elem(file["var"])
                layers = file["layers"] if "layers" in file else {}
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise InputError(f"{path} cannot be read as .h5ad ({exc}); the file is truncated "
                                 "or corrupt: copy or export it again.") from None
            if not isinstance(obs, pd.DataFrame) or not isinstance(var, pd.DataFrame):
                raise InputError(f"{path} was written by anndata older than 0.7; rewrite it with "
                                 "anndata.read_h5ad(path).write_h5ad(path).")
            if "velocity" not in layers or "velocity_genes" not in var:
                raise InputError(f"{path} lacks layers['velocity'] or var['velocity_genes']; run "
                                 "scvelo.tl.velocity on it first, or narrow data.h5ad_glob to the "
                                 "scVelo output files.")
            settings = self.settings
            layer = settings.expression_layer
            if layer is not None and layer not in layers:
                raise InputError(f"{path} has no layer '{layer}' (data.expression_layer); it has "
                                 f"{', '.join(layers.keys())}.")
            target_layer = TARGET_LAYERS[settings.target]
            for needed, key in ((target_layer, f"data.target: {settings.target}"),
                                (settings.tf_input == "smoothed" and SMOOTHED_TF_LAYER, "data.tf_input: smoothed")):
                if needed and needed not in layers:
                    raise InputError(f"{path} has no layer '{needed}' ({key}); scVelo writes it with "
                                     f"{WRITTEN_BY[needed]}: run that on the file first, or choose "
                                     f"another {key.split(':')[0]}.")
            expression_key = "X" if layer is None else f"layers/{layer}"
            check_unique(var.index.to_numpy().astype(str), "var names", str(path))
            genes = pd.Index(gene_ids(var.index.astype(str), self.id_map(), str(path)))
            if (genes == "").all():
                raise InputError(f"{path}: none of its {len(genes)} var names (e.g. {var.index[0]}) "
                                 f"is an Ensembl id or a symbol of the id mapping "
                                 f"({self.root / ID_MAP}); use that species' mapping, or name the "
                                 "genes by Ensembl id.")
            check_unique(genes[genes != ""].to_numpy(), "gene ids", str(path))
            names = obs.index.to_numpy().astype(str)
            check_unique(names, "barcodes", str(path))
            if prefix:
                stem = path.relative_to(self.folder).with_suffix("").as_posix().split("/", 1)[-1]
                names = np.array([f"{stem}:{n}" for n in names])
            tf_cols = np.flatnonzero(genes.isin(tf_ids))
            if settings.tf_input == "smoothed":
                values = _read_matrix(path, file, f"layers/{SMOOTHED_TF_LAYER}", tf_cols)
                values = scale_expression(values, f"{path} [layers/{SMOOTHED_TF_LAYER}]")
            else:
                values = _read_matrix(path, file, expression_key, tf_cols)
                values = scale_expression(values, str(path), settings.expression_is_log)
            velo_cols = np.flatnonzero(var["velocity_genes"].fillna(False).to_numpy(dtype=bool) & (genes != ""))
            if not len(velo_cols):
                raise InputError(f"{path}: var['velocity_genes'] marks no gene (of those the id "
                                 "mapping knows); scVelo fitted none: check its filtering "
                                 "(scvelo.pp.filter_genes, min_r2 of scvelo.tl.velocity).")
            velocity = _read_matrix(path, file, "layers/velocity", velo_cols)
            if target_layer == "velocity":
                target = velocity
            elif target_layer is None:
                target = scale_expression(_read_matrix(path, file, expression_key, velo_cols),
                                          str(path), settings.expression_is_log)
            else:
                target = scale_expression(_read_matrix(path, file, f"layers/{target_layer}", velo_cols),
                                          f"{path} [layers/{target_layer}]")
        if np.isinf(velocity).any():
            raise InputError(f"{path}: layers['velocity'] holds infinite values; use NaN for "
                             "cells without velocity.")
        known = genes[genes != ""]
        return {
            "genes": known,
            "barcodes": names,
            "expression": pd.DataFrame(values.astype(np.float32), columns=genes[tf_cols]),
            "velocity": pd.DataFrame(velocity, columns=genes[velo_cols]),
            "target": pd.DataFrame(target, columns=genes[velo_cols]),
        }

    def id_map(self) -> pd.DataFrame:
        if self._id_map is None:
            self._id_map = read_id_map(self.root / ID_MAP)
        return self._id_map


def _read_matrix(path: Path, file: h5py.File, key: str, columns: np.ndarray) -> np.ndarray:
    try:
        return read_columns(file[key], columns)
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: {key} cannot be read as a dense or sparse matrix ({exc}); "
                         "the file is truncated or corrupt: copy or export it again.") from None


CHUNK_BYTES = 1 << 27  # rows are read this much at a time: a file may exceed memory


def read_columns(element, columns: np.ndarray) -> np.ndarray:
    """Dense `columns` of a matrix stored in an .h5ad (dense, CSR or CSC), read a block
    of rows at a time, so only those columns are ever held whole."""
    if isinstance(element, h5py.Dataset):
        n_rows, n_cols = element.shape
        dtype = element.dtype
        read = lambda rows: element[rows][:, columns]  # noqa: E731
    else:
        matrix = sparse_dataset(element)
        n_rows, n_cols = matrix.shape
        dtype = matrix.dtype
        if matrix.format == "csc":  # columns are contiguous: read them directly
            return matrix[:, columns].toarray()
        read = lambda rows: matrix[rows][:, columns].toarray()  # noqa: E731
    out = np.empty((n_rows, len(columns)), dtype=dtype)
    step = max(1, CHUNK_BYTES // max(1, n_cols * dtype.itemsize))
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        out[rows] = read(rows)
    return out
