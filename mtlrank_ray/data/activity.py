"""TF activity scores and the TF order (notebook step 5).

Files: `data/tf_activity/mean_tf/<Tissue>_<suffix>.csv` and `sum_tf/...`,
rows TF symbols, columns gene symbols; the tissue is the file name without
its last `_part`. NaN means 0; sum scores become log2(x + 1), mean scores
stay raw. Genes and TFs are matched to Ensembl ids through the id mapping.
TFs are ordered as the notebook orders them: those with scores (in the id
mapping's row order), then the rest (sorted); a gene or TF without scores
gets 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .source import check_unique


@dataclass(frozen=True)
class ActivityFiles:
    mean: Path
    sum: Path


def find_activity_files(mean_dir: Path, sum_dir: Path) -> dict[str, ActivityFiles]:
    """Tissue key -> its mean and sum files; empty when the folders are absent."""
    found = {}
    for kind, folder in (("mean", mean_dir), ("sum", sum_dir)):
        by_tissue: dict[str, Path] = {}
        for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            tissue = "_".join(path.stem.split("_")[:-1])
            if tissue in by_tissue:
                raise InputError(f"{by_tissue[tissue]} and {path} both hold {kind} activity "
                                 f"for tissue {tissue}; keep one of them.")
            by_tissue[tissue] = path
        found[kind] = by_tissue
    for tissue in sorted(set(found["mean"]) ^ set(found["sum"])):
        have, lack = ("mean", sum_dir) if tissue in found["mean"] else ("sum", mean_dir)
        raise InputError(f"tissue {tissue} has {have} activity ({found[have][tissue]}) but no "
                         f"file in {lack}; add it, or remove both.")
    return {t: ActivityFiles(found["mean"][t], found["sum"][t]) for t in found["mean"]}


def read_activity(files: ActivityFiles) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, sum) score tables, genes x TF symbols, as the notebook scales them."""
    mean = _read_scores(files.mean)
    summed = _read_scores(files.sum)
    if (summed < 0).any(axis=None):
        raise InputError(f"{files.sum} holds negative sum scores; sum scores are peak "
                         "counts or signal sums of at least 0 (they are log2(x + 1)-scaled).")
    missing_genes = mean.index.difference(summed.index)
    missing_tfs = mean.columns.difference(summed.columns)
    if len(missing_genes) or len(missing_tfs):
        label = missing_genes[0] if len(missing_genes) else missing_tfs[0]
        raise InputError(f"{files.sum} lacks {label!r}, which {files.mean} has; the mean and "
                         "sum files of a tissue must cover the same TFs and genes.")
    return mean, np.log2(summed + 1)


def _read_scores(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, index_col=0).transpose()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"activity file {path} cannot be read as CSV: {exc}") from None
    check_unique(table.columns.to_numpy(), "TF symbols (rows)", str(path))
    check_unique(table.index.to_numpy(), "gene symbols (columns)", str(path))
    try:
        return table.astype(float).fillna(0)
    except ValueError as exc:
        raise InputError(f"activity file {path} holds a value that is not a number: {exc}; "
                         "scores must be numbers or empty.") from None


def tf_order(tf_ids: pd.Index, id_map: pd.DataFrame, scored_tfs: pd.Index) -> tuple[pd.Index, pd.Series]:
    """The notebook's TF order, and the activity symbol of each scored TF.

    `tf_ids`: the TFs in the expression matrix; `scored_tfs`: TF symbols that
    have activity scores. Returns the ordered Ensembl ids and a Series
    (Ensembl id -> symbol) for the scored ones, which come first.
    """
    scored = _ids_with_symbols(id_map, scored_tfs)
    scored = scored[scored.index.isin(tf_ids)]
    rest = pd.Index(np.setdiff1d(tf_ids, scored.index))
    return scored.index.append(rest), scored


def activity_matrices(genes: pd.Index, tfs: pd.Index, scored_tfs: pd.Series, id_map: pd.DataFrame,
                      scores: tuple[pd.DataFrame, pd.DataFrame] | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sum) activity, genes x TFs in the given orders, 0 where there is no score."""
    matrices = []
    for table in scores or ():
        gene_symbols = _ids_with_symbols(id_map, table.index)
        matrix = np.zeros((len(genes), len(tfs)))
        rows = np.flatnonzero(genes.isin(gene_symbols.index))
        matrix[np.ix_(rows, tfs.get_indexer(scored_tfs.index))] = table.loc[
            gene_symbols[genes[rows]], scored_tfs].to_numpy()
        matrices.append(matrix.astype(np.float32))
    if not matrices:
        matrices = [np.zeros((len(genes), len(tfs)), np.float32)] * 2
    return matrices[0], matrices[1]


def _ids_with_symbols(id_map: pd.DataFrame, symbols: pd.Index) -> pd.Series:
    """Ensembl id -> symbol for every id-mapping row whose symbol is in `symbols`,
    in the id mapping's row order (the notebook's left merge)."""
    matched = id_map.loc[id_map["gene_symbol"].isin(symbols)]
    return pd.Series(matched["gene_symbol"].to_numpy(), index=pd.Index(matched["ensembl_id"]))
