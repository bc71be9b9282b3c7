"""The reference tables both input formats share, read as the notebook reads them.

- the TF list (`data/raw/tf/tf_list.csv`, column `Ensembl ID`, or for a list
  of symbols (a mouse list, say) a column `symbol`, mapped to ids through the
  id mapping; the notebook does not filter on "Is TF?", and neither do we),
- the Ensembl-to-symbol table (`data/raw/id_mapping/ensembl_to_symbol.csv`,
  columns `ensembl_id`, `gene_symbol`; the first row per Ensembl id wins, and
  the first id per symbol when symbols are mapped to ids). Genes are known by
  these ids throughout; any species' table serves.
- the lasso list (`results/r2/lasso_r2.csv`, columns `tissue`,
  `gene_ensembl`), optional: the genes the notebook draws from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

log = logging.getLogger(__name__)

TF_LIST = Path("data/raw/tf/tf_list.csv")
ID_MAP = Path("data/raw/id_mapping/ensembl_to_symbol.csv")
LASSO = Path("results/r2/lasso_r2.csv")


def read_csv_checked(path: Path, columns: list[str], what: str,
                     fix: str = "put it there (see README, 'Data layout')", **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; {fix}.")
    try:
        table = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read as CSV: {exc}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{what} {path} lacks column(s) {', '.join(missing)}; "
                         f"it has {', '.join(map(str, table.columns))}.")
    return table


def read_tf_list(path: Path, id_map: pd.DataFrame) -> pd.Index:
    """The TFs' Ensembl ids, from a column `Ensembl ID` or, mapped, a column `symbol`."""
    table = read_csv_checked(path, [], "TF list")
    if "Ensembl ID" in table.columns:
        return pd.Index(strip_version(pd.Index(table["Ensembl ID"].dropna().astype(str))).unique())
    if "symbol" not in table.columns:
        raise InputError(f"TF list {path} has neither a column 'Ensembl ID' nor 'symbol'; it has "
                         f"{', '.join(map(str, table.columns))}.")
    symbols = pd.Index(table["symbol"].dropna().astype(str).unique())
    ids = gene_ids(symbols, id_map, f"TF list {path}")
    return pd.Index(ids[ids != ""])


ENSEMBL_ID = r"^ENS[A-Z]*G\d{6,}$"


def strip_version(ids: pd.Index) -> pd.Index:
    """Ensembl ids without a version suffix: 'ENSG00000137203.5' -> 'ENSG00000137203'."""
    return ids.str.replace(r"^(ENS\w+)\.\d+$", r"\1", regex=True)


def gene_ids(names: pd.Index, id_map: pd.DataFrame, where: str) -> np.ndarray:
    """The id of each name: an id as it is (an Ensembl id, a version suffix '.5' dropped,
    or any id of the mapping, such as FlyBase's), a symbol through the id mapping (the
    first id listed for it); "" for a name that is neither, reported as a count with
    examples."""
    stripped = strip_version(names)
    is_id = np.asarray(stripped.str.match(ENSEMBL_ID), dtype=bool) | stripped.isin(id_map["ensembl_id"])
    if is_id.all():
        return stripped.to_numpy(dtype=object)
    first = ~id_map["gene_symbol"].duplicated()
    by_symbol = id_map.loc[first].set_index("gene_symbol")["ensembl_id"]
    ids = np.where(is_id, stripped, by_symbol.reindex(names).fillna("").to_numpy(dtype=object))
    missed = names[ids == ""]
    if len(missed):
        log.warning("%s: %d of %d names are neither ids nor symbols of the id mapping and are "
                    "left out (e.g. %s)", where, len(missed), len(names), ", ".join(missed[:5]))
    ambiguous = names[~is_id & names.isin(id_map.loc[~first, "gene_symbol"])]
    if len(ambiguous):
        log.warning("%s: %d symbols have several ids in the id mapping; the first listed is used "
                    "(e.g. %s)", where, len(ambiguous), ", ".join(ambiguous[:5]))
    return ids


def read_id_map(path: Path) -> pd.DataFrame:
    """The id mapping (a leading index column, as pandas writes one, is optional)."""
    table = read_csv_checked(path, ["ensembl_id", "gene_symbol"], "id mapping")
    table["ensembl_id"] = strip_version(pd.Index(table["ensembl_id"].astype(str))).to_numpy()
    table = table.loc[~table["ensembl_id"].duplicated(), ["ensembl_id", "gene_symbol"]]
    table.index = table["ensembl_id"]
    return table


def normalize_tissue(name: str) -> str:
    """The notebook's tissue key: 'Kidney (Left)' -> 'Kidney_Left'."""
    return re.sub(r"[()]", "", re.sub(r"\s+", "_", name))


def read_lasso(path: Path) -> pd.DataFrame | None:
    """The lasso list with notebook tissue keys, or None when there is none."""
    if not path.is_file():
        return None
    table = read_csv_checked(path, ["tissue", "gene_ensembl"], "lasso list", index_col=0)
    table["tissue"] = table["tissue"].astype(str).map(normalize_tissue)
    table["gene_ensembl"] = table["gene_ensembl"].astype(str)
    return table
