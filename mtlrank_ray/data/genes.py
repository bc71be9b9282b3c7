"""Which genes are modelled, and their clusters (notebook steps 1-2).

A gene is a candidate when it has velocity in more than `min_cells` cells
(per-tissue overrides: `min_cells_by_tissue`), or in more than
`min_cell_fraction` of the tissue's cells where that is fewer, and is present
in the expression matrix. With a lasso list, candidates are its rows for the tissue,
in the list's order (the notebook's semantics); without one, all velocity
genes in the velocity file's column order. `n_genes` of them are drawn as the
notebook draws them: `np.random.seed(seed)` then `np.random.choice` without
replacement, kept in the drawn order. For a target other than velocity
the TFs are then left out of the drawn genes (`excluded`): their abundance is
one of the inputs; drawing first keeps every target's genes those of velocity. Clusters are balanced k-means on the genes' target profiles, NaN
filled with the gene's mean.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from k_means_constrained import KMeansConstrained

from ..config import GenesConfig
from ..errors import InputError

log = logging.getLogger(__name__)


def eligible_genes(velocity: pd.DataFrame, expression_genes: pd.Index, tissue: str,
                   settings: GenesConfig, velocity_file: str) -> pd.Index:
    """Velocity genes, in the file's column order, with velocity in more than
    `min_cells_for` the tissue's cells and a column in the expression matrix."""
    counts = velocity.notna().sum(axis=0)
    empty = counts.index[counts == 0]
    if len(empty):
        log.warning("tissue %s: %d genes in %s have no velocity in any cell and are skipped "
                    "(%s)", tissue, len(empty), velocity_file, ", ".join(empty[:5]))
    passing = counts.index[counts > settings.min_cells_for(tissue, len(velocity))]
    return passing[passing.isin(expression_genes)]


def select_genes(velocity: pd.DataFrame, expression_genes: pd.Index, lasso: pd.DataFrame | None,
                 tissue: str, settings: GenesConfig, velocity_file: str,
                 lasso_file: str = "the lasso list", excluded: pd.Index = pd.Index([])) -> pd.Index:
    passing = eligible_genes(velocity, expression_genes, tissue, settings, velocity_file)
    min_cells = settings.min_cells_for(tissue, len(velocity))
    if lasso is None:
        listed = velocity.columns
    else:
        listed = lasso.loc[lasso["tissue"] == tissue, "gene_ensembl"]
        if listed.empty:
            raise InputError(f"{lasso_file} has no rows for tissue {tissue} (its tissues, "
                             f"normalized: {', '.join(sorted(lasso['tissue'].unique()))}); add "
                             "them, or remove the file to draw from all velocity genes.")
        if listed.duplicated().any():
            log.warning("tissue %s: %s lists %d genes more than once; the first row counts",
                        tissue, lasso_file, listed.duplicated().sum())
            listed = listed[~listed.duplicated()]
    candidates = pd.Index(listed[pd.Index(listed).isin(passing)])
    log.info("tissue %s: %d of %d %s genes have velocity in more than %d cells and expression",
             tissue, len(candidates), len(listed), "listed" if lasso is not None else "velocity",
             min_cells)
    if len(candidates) < settings.n_clusters:
        raise InputError(
            f"tissue {tissue} ({len(velocity)} cells): {len(candidates)} genes have velocity in "
            f"more than {min_cells} cells ({velocity_file}) and expression, fewer than the "
            f"{settings.n_clusters} clusters asked for; "
            + _fitting_settings(velocity, expression_genes, pd.Index(listed), tissue, settings))
    rng = np.random.RandomState(settings.seed)  # the stream np.random.seed(seed) gives
    if settings.n_genes < len(candidates):
        drawn = rng.choice(np.arange(len(candidates)), size=settings.n_genes, replace=False)
    else:
        drawn = np.arange(len(candidates))
    if len(drawn) < settings.n_clusters:
        raise InputError(f"genes.n_genes ({settings.n_genes}) is less than genes.n_clusters "
                         f"({settings.n_clusters}); every cluster needs a gene.")
    genes = candidates[drawn]
    own_input = genes.isin(excluded)
    if own_input.any():
        log.info("tissue %s: %d TFs of the %d genes drawn left out: their abundance is an input",
                 tissue, own_input.sum(), len(genes))
        if (~own_input).sum() < settings.n_clusters:
            raise InputError(f"tissue {tissue}: {(~own_input).sum()} of the {len(genes)} genes drawn "
                             f"are not TFs, fewer than the {settings.n_clusters} clusters asked for "
                             "(data.target other than velocity leaves TFs out); raise genes.n_genes "
                             "or lower genes.n_clusters.")
    return genes[~own_input]


def _fitting_settings(velocity: pd.DataFrame, expression_genes: pd.Index, listed: pd.Index,
                      tissue: str, settings: GenesConfig) -> str:
    """The gene settings under which `n_genes` genes (or as many as there are) qualify."""
    counts = velocity.notna().sum(axis=0)
    usable = counts[listed[listed.isin(expression_genes) & listed.isin(counts.index)]]
    usable = usable[usable > 0].sort_values(ascending=False)
    wanted = min(settings.n_genes, len(usable))
    if wanted == 0:
        return ("no listed gene has both velocity and expression there: check the tissue's "
                "velocity and expression inputs.")
    fits = f"genes.min_cells_by_tissue: {{{tissue!r}: {usable.iloc[wanted - 1] - 1}}}"
    if wanted < settings.n_clusters:
        fits += f" and genes.n_clusters: {wanted}"
    return f"{fits} fits ({wanted} genes qualify)."


def cluster_genes(target: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Balanced cluster labels (0..n_clusters-1) for the columns of `target`."""
    n_genes = target.shape[1]
    profiles = np.where(np.isnan(target), np.nanmean(target, axis=0), target)
    model = KMeansConstrained(n_clusters=n_clusters, size_min=n_genes // n_clusters,
                              size_max=math.ceil(n_genes / n_clusters), random_state=seed)
    return model.fit_predict(profiles.T.astype(np.float64)).astype(np.int32)
