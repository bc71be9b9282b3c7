"""`mtlrank-ray lasso`: the notebook's lasso list, readable by the gene selection."""

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SETTINGS
from sklearn.linear_model import Lasso
from sklearn.model_selection import cross_val_score

from mtlrank_ray.cli import main
from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import load_tissue, prepare_store

LIST = "results/r2/lasso_r2.csv"


def test_lasso_list_is_the_notebooks_and_feeds_the_gene_selection(atlas, small_config, tmp_path, capsys):
    config = config_from_dict(SMALL_SETTINGS)
    prepare_store(atlas, config, tmp_path / "a")  # with the demo's own list
    (atlas / LIST).unlink()
    prepare_store(atlas, config, tmp_path / "b")  # without a list
    assert main(["lasso", "--data", str(atlas), "--config", str(small_config)]) == 0
    assert "lasso list:" in capsys.readouterr().out
    table = pd.read_csv(atlas / LIST, index_col=0)
    assert list(table.columns) == ["tissue", "r2", "gene_ensembl", "gene_hgnc", "tf_ensembl", "tf_hgnc"]
    assert list(table.index) == list(range(len(table)))
    # R² is the mean 5-fold cross-validated R² of Lasso(alpha=0.1) on the gene's cells.
    store = load_tissue(tmp_path / "b", "Liver")
    liver = table[table.tissue == "Liver"].set_index("gene_ensembl")
    with_tf = 0
    for column, gene in enumerate(store.genes):
        cells = ~np.isnan(store.target[:, column])
        x, y = store.expression[cells].astype(float), store.target[cells, column].astype(float)
        expected = cross_val_score(Lasso(alpha=0.1), x, y, cv=5).mean()
        assert liver.loc[gene, "r2"] == pytest.approx(expected, abs=1e-3)
        coef = Lasso(alpha=0.1).fit(x, y).coef_
        if coef.any():  # the TF with the largest |coefficient|; none when all are 0
            assert liver.loc[gene, "tf_ensembl"] == store.tfs[np.argmax(np.abs(coef))]
            with_tf += 1
        else:
            assert pd.isna(liver.loc[gene, "tf_ensembl"])
    assert with_tf >= 3
    assert liver.r2.max() > 0.1  # the planted signal (kinetic: little of it is linear)
    # The list holds every eligible gene in the velocity file's order, so the gene
    # selection draws what it draws without a list (and unlike the demo's own list).
    prepare_store(atlas, config, tmp_path / "c")
    for tissue in ("Kidney_Left", "Liver"):
        listed = load_tissue(tmp_path / "c", tissue).genes
        np.testing.assert_array_equal(listed, load_tissue(tmp_path / "b", tissue).genes)
        assert set(listed) != set(load_tissue(tmp_path / "a", tissue).genes)


def test_a_rerun_for_one_tissue_replaces_only_its_rows(atlas, small_config, capsys):
    before = pd.read_csv(atlas / LIST, index_col=0)  # the demo's list: notebook tissue names
    assert main(["lasso", "--data", str(atlas), "--config", str(small_config), "--tissue", "Liver"]) == 0
    after = pd.read_csv(atlas / LIST, index_col=0)
    kept = before[before.tissue != "Liver"]
    pd.testing.assert_frame_equal(after.iloc[:len(kept)], kept)
    assert (after.iloc[len(kept):].tissue == "Liver").all()
    assert main(["lasso", "--data", str(atlas), "--config", str(small_config), "--tissue", "Liver"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(atlas / LIST, index_col=0), after)  # no duplicates


def test_lasso_list_errors_name_the_fix(atlas, tmp_path, capsys):
    assert main(["lasso", "--data", str(atlas), "--tissue", "Lung"]) == 2
    assert "no tissue 'Lung' in the data; tissues: Kidney_Left, Liver" in capsys.readouterr().err
    strict = tmp_path / "strict.yaml"
    strict.write_text("genes: {min_cells: 100000, min_cells_by_tissue: {}, min_cell_fraction: 1}\n")
    before = (atlas / LIST).read_text()
    assert main(["lasso", "--data", str(atlas), "--config", str(strict)]) == 2
    assert "lower genes.min_cells" in capsys.readouterr().err
    assert (atlas / LIST).read_text() == before  # nothing half-written
