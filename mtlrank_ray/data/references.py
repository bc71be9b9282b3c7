"""The reference tables both input formats share, read as the notebook reads them.

- the TF list (`data/raw/tf/tf_list.csv`, column `Ensembl ID`; the notebook
  does not filter on "Is TF?", and neither do we),
- the Ensembl-to-symbol table (`data/raw/id_mapping/ensembl_to_symbol.csv`,
  columns `ensembl_id`, `gene_symbol`; the first row per Ensembl id wins),
- the lasso list (`results/r2/lasso_r2.csv`, columns `tissue`,
  `gene_ensembl`), optional: the genes the notebook draws from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from ..errors import InputError

log = logging.getLogger(__name__)


def read_csv_checked(path: Path, columns: list[str], what: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; put it there (see README, "
                         "'Data layout').")
    try:
        table = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read as CSV: {exc}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{what} {path} lacks column(s) {', '.join(missing)}; "
                         f"it has {', '.join(map(str, table.columns))}.")
    return table


def read_tf_list(path: Path) -> pd.Index:
    table = read_csv_checked(path, ["Ensembl ID"], "TF list", index_col=0)
    return pd.Index(table["Ensembl ID"].dropna().astype(str).unique())


def read_id_map(path: Path) -> pd.DataFrame:
    table = read_csv_checked(path, ["ensembl_id", "gene_symbol"], "id mapping", index_col=0)
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
