"""scVelo output as input: `.h5ad` files, one or several per tissue.

    DIR/data/h5ad/<Tissue>/**/*.h5ad   (which files: data.h5ad_glob)

Each file holds cells of one sample: `layers['velocity']` with
`var['velocity_genes']` marking the genes scVelo fitted, and expression in X
or in the layer `data.expression_layer`, raw (log10(x + 1) is applied) or
already log-scaled (`data.expression_is_log`). A tissue's files are
concatenated by cells in sorted path order; with several files a barcode
becomes `<file path without .h5ad>:<obs name>` so samples never collide.
Gene ids are the var names with any Ensembl version suffix (".5") removed.
Activity files (the seed layout's `data/tf_activity/`) are optional: without
them activity is zero, and a warning says so.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse

from ..config import DataConfig
from ..errors import InputError
from .activity import find_activity_files, read_activity
from .seed_layout import MEAN_TF, SUM_TF
from .source import TissueInputs, check_unique, scale_expression

log = logging.getLogger(__name__)

H5AD_DIR = Path("data/h5ad")


class ScveloFiles:
    """The `Source` for per-tissue folders of scVelo `.h5ad` files."""

    def __init__(self, root: Path, settings: DataConfig):
        self.root = root
        self.folder = root / H5AD_DIR
        self.settings = settings
        self.activity = find_activity_files(root / MEAN_TF, root / SUM_TF)

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
        check_unique(barcodes, "barcodes", f"tissue {tissue} ({self.folder / tissue})")
        return TissueInputs(
            name=tissue,
            barcodes=barcodes,
            expression=pd.concat([s["expression"][tfs] for s in samples], ignore_index=True),
            expression_genes=expression_genes,
            velocity=pd.concat([s["velocity"].reindex(columns=velocity_genes) for s in samples],
                               ignore_index=True),
            velocity_file=", ".join(map(str, paths)),
            activity=activity,
        )

    def _read(self, path: Path, tf_ids: pd.Index, prefix: bool) -> dict:
        try:
            adata = anndata.read_h5ad(path)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path} cannot be read as .h5ad ({exc}); the file is truncated "
                             "or corrupt: copy or export it again.") from None
        if "velocity" not in adata.layers or "velocity_genes" not in adata.var:
            raise InputError(f"{path} lacks layers['velocity'] or var['velocity_genes']; run "
                             "scvelo.tl.velocity on it first, or narrow data.h5ad_glob to the "
                             "scVelo output files.")
        layer = self.settings.expression_layer
        if layer is not None and layer not in adata.layers:
            raise InputError(f"{path} has no layer '{layer}' (data.expression_layer); it has "
                             f"{', '.join(adata.layers.keys())}.")
        genes = pd.Index([re.sub(r"^(ENS\w+)\.\d+$", r"\1", g) for g in adata.var_names])
        check_unique(genes.to_numpy(), "gene ids", str(path))
        names = adata.obs_names.to_numpy().astype(str)
        check_unique(names, "barcodes", str(path))
        if prefix:
            stem = path.relative_to(self.folder).with_suffix("").as_posix().split("/", 1)[-1]
            names = np.array([f"{stem}:{n}" for n in names])
        tf_cols = np.flatnonzero(genes.isin(tf_ids))
        values = _dense((adata.X if layer is None else adata.layers[layer])[:, tf_cols])
        values = scale_expression(values, str(path), self.settings.expression_is_log)
        velo_cols = np.flatnonzero(adata.var["velocity_genes"].to_numpy(dtype=bool))
        velocity = _dense(adata.layers["velocity"][:, velo_cols])
        if np.isinf(velocity).any():
            raise InputError(f"{path}: layers['velocity'] holds infinite values; use NaN for "
                             "cells without velocity.")
        return {
            "genes": genes,
            "barcodes": names,
            "expression": pd.DataFrame(values.astype(np.float32), columns=genes[tf_cols]),
            "velocity": pd.DataFrame(velocity, columns=genes[velo_cols]),
        }


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if scipy.sparse.issparse(matrix) else np.asarray(matrix)
