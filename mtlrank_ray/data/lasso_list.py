"""`mtlrank-ray lasso`: the lasso list the gene selection reads, for users without one.

The notebook's lasso step, writing `results/r2/lasso_r2.csv` under the data
folder. Per tissue, every gene with velocity in more than `genes.min_cells`
cells and a column in the expression matrix gets a Lasso(alpha=0.1) of its
velocity on the TF expression (log10(RPKM + 1), as the notebook uses it) over
the cells with velocity; `r2` is the mean R² of 5-fold cross-validation
(sklearn's `cross_val_score`: unshuffled folds). One row per gene, in the
velocity file's column order (so `prepare` draws the same genes with or
without the file), columns:

    tissue, r2, gene_ensembl, gene_hgnc,
    tf_ensembl, tf_hgnc   the TF with the largest |coefficient| in a fit on all the
                          gene's cells (empty when every coefficient is 0)

Rows of tissues not computed now are kept from an existing file; a tissue
computed again replaces its rows. The file is replaced atomically.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import Lasso
from sklearn.model_selection import cross_val_score

from ..config import Config
from ..errors import InputError
from .genes import eligible_genes
from .prepare import choose_tissues, existing_root, load_inputs, open_source, read_as
from .references import (
    ID_MAP,
    LASSO,
    TF_LIST,
    normalize_tissue,
    read_csv_checked,
    read_id_map,
    read_tf_list,
)
from .source import TissueInputs
from .store import write_atomically

log = logging.getLogger(__name__)

ALPHA = 0.1  # the notebook's
FOLDS = 5
COLUMNS = ["tissue", "r2", "gene_ensembl", "gene_hgnc", "tf_ensembl", "tf_hgnc"]


def write_lasso_list(data_dir: str | Path, config: Config, tissues: str = "all",
                     jobs: int | None = None) -> tuple[Path, pd.DataFrame]:
    """Compute the chosen tissues' rows and write the list; returns (path, new rows)."""
    root = existing_root(data_dir)
    source = open_source(root, config)
    log.info("data %s: %s", root, read_as(root, config, source))
    chosen = choose_tissues(tissues, source.tissues())
    id_map = read_id_map(root / ID_MAP)
    tf_ids = read_tf_list(root / TF_LIST, id_map)
    symbols = id_map["gene_symbol"]
    rows = pd.concat([tissue_rows(load_inputs(source, tissue, tf_ids, config), config, symbols, jobs)
                      for tissue in chosen], ignore_index=True)
    path = root / LASSO
    table = rows
    if path.is_file():
        existing = read_csv_checked(path, ["tissue", "gene_ensembl"], "lasso list", index_col=0)
        kept = existing[~existing["tissue"].astype(str).map(normalize_tissue).isin(chosen)]
        table = pd.concat([kept, rows], ignore_index=True) if len(kept) else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda p: table.to_csv(p))
    return path, rows


def tissue_rows(inputs: TissueInputs, config: Config, symbols: pd.Series,
                jobs: int | None = None) -> pd.DataFrame:
    genes = eligible_genes(inputs.velocity, inputs.expression_genes, inputs.name, config.genes,
                           inputs.velocity_file)
    counts = inputs.velocity[genes].notna().sum(axis=0)
    too_few = counts.index[counts < 2 * FOLDS]
    if len(too_few):
        log.warning("tissue %s: %d genes have velocity in fewer than %d cells, too few for "
                    "%d-fold cross-validation, and are left out (%s)", inputs.name,
                    len(too_few), 2 * FOLDS, FOLDS, ", ".join(too_few[:5]))
        genes = genes[~genes.isin(too_few)]
    if genes.empty:
        raise InputError(f"tissue {inputs.name}: no gene of {inputs.velocity_file} has velocity "
                         f"in more than {config.genes.min_cells_for(inputs.name, len(inputs.velocity))} "
                         "cells and expression; lower genes.min_cells in the config.")
    expression = inputs.expression.to_numpy(np.float64)
    tfs = inputs.expression.columns
    tf_symbols = symbols.reindex(tfs).fillna("").astype(str).to_numpy()

    def fit(gene: str) -> tuple:
        velocity = inputs.velocity[gene].to_numpy(np.float64)
        cells = ~np.isnan(velocity)
        x, y = expression[cells], velocity[cells]
        r2 = cross_val_score(Lasso(alpha=ALPHA), x, y, cv=FOLDS).mean()
        coef = np.abs(Lasso(alpha=ALPHA).fit(x, y).coef_)
        top = int(np.argmax(coef))
        tf, tf_symbol = (tfs[top], tf_symbols[top]) if coef[top] > 0 else ("", "")
        return inputs.name, r2, gene, symbols.get(gene, ""), tf, tf_symbol

    log.info("tissue %s: lasso of %d genes on %d TFs, %d-fold cross-validated", inputs.name,
             len(genes), len(tfs), FOLDS)
    rows = []
    # sklearn's coordinate descent releases the GIL: threads share the expression matrix.
    with ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        for row in pool.map(fit, genes):
            rows.append(row)
            if len(rows) % 100 == 0 or len(rows) == len(genes):
                log.info("tissue %s: %d of %d genes", inputs.name, len(rows), len(genes))
    return pd.DataFrame(rows, columns=COLUMNS)
