"""`prepare` reproduces the notebook's gene selection, clustering and alignment."""

import dataclasses

import h5py
import numpy as np
import pytest
from conftest import REPO, SMALL_SETTINGS
from seed_reference import notebook_prepare

from mtlrank_ray.config import load_config
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.dev.demo import write_demo


def assert_matches_notebook(store, reference, tissue):
    ours, ref = load_tissue(store, tissue), reference[tissue]
    genes = ref["selected_genes"]
    assert list(ours.genes) == list(genes)  # same genes, same drawn order
    np.testing.assert_array_equal(ours.clusters, ref["cluster_labels"].loc[genes, "cluster"])
    assert list(ours.tfs) == list(ref["rpkm"].columns)  # scored TFs first, then the rest
    assert list(ours.barcodes) == list(ref["rpkm"].index)
    np.testing.assert_array_equal(ours.expression, ref["rpkm"].to_numpy(np.float32))
    np.testing.assert_array_equal(ours.target, ref["velo"].loc[:, genes].to_numpy(np.float32))
    for name in ("mean", "sum"):
        expected = ref[f"act_mat_{name}"].loc[genes].to_numpy(np.float32)
        np.testing.assert_array_equal(getattr(ours, f"activity_{name}"), expected)
    assert ours.activity_mean.any() and ours.activity_sum.any()


def test_small_atlas_matches_notebook(atlas, small_config, tmp_path):
    prepare_store(atlas, load_config(small_config), tmp_path / "store")
    g = SMALL_SETTINGS["genes"]
    reference = notebook_prepare(atlas, ["Kidney_Left", "Liver"], num_genes=g["n_genes"],
                                 num_samples=g["min_cells"], liver_samples=150,
                                 n_clusters=g["n_clusters"], seed=g["seed"])
    for tissue in ("Kidney_Left", "Liver"):
        assert_matches_notebook(tmp_path / "store", reference, tissue)


@pytest.mark.slow
def test_default_demo_with_smoke_config_matches_notebook(tmp_path):
    atlas = write_demo(tmp_path / "demo")
    smoke = load_config(REPO / "tune_configs" / "smoke.yaml")  # its selection, on the notebook's files
    config = dataclasses.replace(smoke, data=dataclasses.replace(smoke.data, format="seed"))
    prepare_store(atlas, config, tmp_path / "store")
    reference = notebook_prepare(atlas, ["Kidney_Left", "Liver"], num_genes=config.genes.n_genes,
                                 num_samples=config.genes.min_cells, liver_samples=1000,
                                 n_clusters=config.genes.n_clusters, seed=config.genes.seed)
    for tissue in ("Kidney_Left", "Liver"):
        assert_matches_notebook(tmp_path / "store", reference, tissue)


def test_without_lasso_list_candidates_are_velocity_genes_in_file_order(atlas, small_config, tmp_path):
    (atlas / "results/r2/lasso_r2.csv").unlink()
    prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Liver")
    with h5py.File(atlas / "data/processed/velo/velo.hdf5") as velo, \
            h5py.File(atlas / "data/processed/rpkm/rpkm.hdf5") as rpkm:
        file_order = velo["Liver/ensembl"][()].astype(str)
        counts = (~np.isnan(velo["Liver/velo"][()])).sum(axis=0)
        in_expression = set(rpkm["Liver/ensembl"][()].astype(str))
    candidates = [g for g, n in zip(file_order, counts) if n > 150 and g in in_expression]
    np.random.seed(1000)
    drawn = np.random.choice(np.arange(len(candidates)), size=16, replace=False)
    assert list(load_tissue(tmp_path / "store", "Liver").genes) == [candidates[i] for i in drawn]
