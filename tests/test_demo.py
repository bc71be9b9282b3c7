"""The demo atlas: deterministic, in the seed layout, with the structure it claims."""

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SPEC

from mtlrank_ray.dev import demo
from mtlrank_ray.dev.demo import DEMO_ENTRIES, DemoSpec, write_demo
from mtlrank_ray.errors import InputError


def read_tissue(atlas, tissue):
    with h5py.File(atlas / "data/processed/rpkm/rpkm.hdf5") as rpkm, \
            h5py.File(atlas / "data/processed/velo/velo.hdf5") as velo:
        exp = pd.DataFrame(rpkm[tissue]["exp"][()], columns=rpkm[tissue]["ensembl"][()].astype(str))
        vel = pd.DataFrame(velo[tissue]["velo"][()], columns=velo[tissue]["ensembl"][()].astype(str))
        assert list(rpkm[tissue]["barcode"][()]) == list(velo[tissue]["barcode"][()])
    return exp, vel


def test_same_seed_same_atlas_other_seed_other_atlas(small_atlas_template, tmp_path):
    again = write_demo(tmp_path / "again", SMALL_SPEC)
    other = write_demo(tmp_path / "other", DemoSpec(**{**SMALL_SPEC.__dict__, "seed": 8}))
    for name in ("data/raw/tf/tf_list.csv", "data/tf_activity/sum_tf/Liver_sum.csv",
                 "results/r2/lasso_r2.csv", "truth/genes.csv", "truth/regulators.csv"):
        assert (again / name).read_text() == (small_atlas_template / name).read_text()
    exp, vel = read_tissue(small_atlas_template, "Liver")
    exp2, vel2 = read_tissue(again, "Liver")
    pd.testing.assert_frame_equal(exp, exp2)
    pd.testing.assert_frame_equal(vel, vel2)
    assert not read_tissue(other, "Liver")[1].equals(vel)


def test_layout_and_names_follow_the_seed(small_atlas_template):
    assert sorted(p.name for p in small_atlas_template.iterdir()) == sorted(DEMO_ENTRIES)
    with h5py.File(small_atlas_template / "data/processed/rpkm/rpkm.hdf5") as f:
        assert sorted(f) == ["Kidney_Left", "Liver"]
    lasso = pd.read_csv(small_atlas_template / "results/r2/lasso_r2.csv", index_col=0)
    assert set(lasso.tissue) == {"Kidney (Left)", "Liver"}
    assert list(lasso.columns) == ["tissue", "r2", "gene_ensembl", "gene_hgnc", "tf_ensembl", "tf_hgnc"]
    mean = pd.read_csv(small_atlas_template / "data/tf_activity/mean_tf/Kidney_Left_mean.csv", index_col=0)
    assert mean.isna().any(axis=None)  # empty scores, read as 0


def test_planted_truth(small_atlas_template):
    atlas = small_atlas_template
    truth = pd.read_csv(atlas / "truth/genes.csv")
    regulators = pd.read_csv(atlas / "truth/regulators.csv")
    tf_list = pd.read_csv(atlas / "data/raw/tf/tf_list.csv", index_col=0)
    assert set(regulators.tf) <= set(tf_list["Ensembl ID"])
    for tissue, cells in (("Kidney_Left", 400), ("Liver", 250)):
        exp, vel = read_tissue(atlas, tissue)
        genes = truth[truth.tissue == tissue].set_index("gene")
        # NaN velocities, counted as the truth says, below and above the thresholds.
        np.testing.assert_array_equal(vel.notna().sum()[genes.index], genes.n_cells)
        assert genes.n_cells.min() < 0.6 * cells and genes.n_cells.max() > 0.9 * cells
        assert genes.r2_ceiling.between(0.2, 0.95).all()
        # Never-expressed TFs.
        silent = tf_list["Ensembl ID"].iloc[:SMALL_SPEC.n_silent_tfs]
        assert (exp[silent] == 0).all(axis=None) and (exp[tf_list["Ensembl ID"]] > 0).any().sum() > 15
        # Genes of one program share their velocity structure: they correlate more
        # with each other than with genes of other programs.
        corr = vel.corr().abs().to_numpy()
        same = genes.program.to_numpy()[:, None] == genes.program.to_numpy()[None, :]
        np.fill_diagonal(same, False)
        off = ~same & ~np.eye(len(genes), dtype=bool)
        assert corr[same].mean() > 2 * corr[off].mean()


def test_activity_is_enriched_at_true_pairs(small_atlas_template):
    scores = pd.read_csv(small_atlas_template / "data/tf_activity/sum_tf/Liver_sum.csv", index_col=0)
    regulators = pd.read_csv(small_atlas_template / "truth/regulators.csv")
    pairs = {(r.tf_symbol, r.gene_symbol) for r in regulators.itertuples()}
    stacked = scores.fillna(0).stack()
    is_true = np.array([pair in pairs for pair in stacked.index])
    assert is_true.sum() > 10
    assert stacked[is_true].mean() > 5 * stacked[~is_true].mean()


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="is not a demo atlas"):
        write_demo(tmp_path / "mine", SMALL_SPEC)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_rewriting_a_demo_replaces_it_but_never_what_a_user_put_beside_it(small_atlas_template, tmp_path):
    first = write_demo(tmp_path / "demo", SMALL_SPEC)
    (first / "data" / "stale.txt").write_text("old")
    write_demo(tmp_path / "demo", SMALL_SPEC)
    assert not (first / "data" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging left behind
    # A run started from inside the demo (`cd demo && python ../tune.py`) writes runs/ there.
    (first / "runs" / "default").mkdir(parents=True)
    (first / "runs" / "default" / "gene_r2.csv").write_text("results")
    with pytest.raises(InputError, match="holds runs beside the demo atlas"):
        write_demo(first, SMALL_SPEC)
    assert (first / "runs" / "default" / "gene_r2.csv").read_text() == "results"


def test_truth_names_each_regulators_role(small_atlas_template):
    regulators = pd.read_csv(small_atlas_template / "truth/regulators.csv", keep_default_na=False)
    for _, edges in regulators.groupby("gene"):
        assert sorted(edges.effect) == ["activation", "activation", "repression"]
        pair = edges[edges.effect == "activation"]
        assert set(pair.partner) == set(pair.tf)  # the activators are each other's partner
        assert (edges.loc[edges.effect == "repression", "partner"] == "").all()
    genes = pd.read_csv(small_atlas_template / "truth/genes.csv")
    assert (genes.beta > genes.gamma).all()


def test_transcription_is_cooperative_hill_kinetics():
    """α = basal + vmax (w1 h+(x1) h+(x2) + w2 h-(x3)): saturating in each activator,
    needing both of the pair, lowered by the repressor."""
    regulators, program = np.array([[0, 1, 2]]), np.array([0])
    kinetics = {"basal": np.array([0.1]), "vmax": np.array([2.0]), "weights": np.array([[1.0, 9.0, 0.5]])}
    typical = np.array([1.0, 1.0, 1.0])

    def alpha(x1, x2, x3):
        return demo.transcription_rate(np.array([[x1, x2, x3]]), typical, regulators, program,
                                       kinetics, n=2.0)[0, 0]
    assert alpha(1, 1, 1) == pytest.approx(0.1 + 2 * (0.25 + 0.25))
    assert alpha(0, 100, 1e-9) == pytest.approx(0.1 + 2 * 0.5)  # half the pair: no activation
    assert alpha(10, 10, 1) - alpha(3, 10, 1) < alpha(1, 10, 1) - alpha(0.3, 10, 1)  # saturates
    assert alpha(1, 1, 3) < alpha(1, 1, 1) < alpha(1, 1, 0.3)  # repression


def test_splicing_is_solved_exactly():
    """`splice` against a fine explicit integration of u' = α − βu, s' = βu − γs."""
    u, s, alpha, beta, gamma = 0.3, 2.0, 1.5, np.array(3.0), np.array(0.25)
    exact = demo.splice(u, s, alpha, beta, gamma, 0.8)
    fine = np.array([u, s])
    for _ in range(80_000):
        fine = fine + 1e-5 * np.array([alpha - beta * fine[0], beta * fine[0] - gamma * fine[1]])
    np.testing.assert_allclose(exact, fine, rtol=1e-4)
    steady = demo.splice(alpha / beta, alpha / gamma, alpha, beta, gamma, 5.0)
    np.testing.assert_allclose(steady, [alpha / beta, alpha / gamma])


def median_correlation(estimate: np.ndarray, truth: np.ndarray) -> float:
    estimate, truth = estimate - estimate.mean(0), truth - truth.mean(0)
    return float(np.median((estimate * truth).sum(0) / np.sqrt((estimate ** 2).sum(0) * (truth ** 2).sum(0))))


@pytest.mark.parametrize("tissue", ["Kidney_Left", "Liver"])
def test_the_counts_file_is_scvelos_estimate_for_the_seed_layouts_cells(small_atlas_template, tissue):
    """What scVelo estimated from counts of the same cells: velocity far noisier than the
    smoothed abundances, each beside the model's noise-free values."""
    pytest.importorskip("scvelo")
    adata = anndata.read_h5ad(small_atlas_template / f"data/h5ad/{tissue}/{tissue}.h5ad")
    assert "velocity_params" in adata.uns and {"velocity", "Ms", "Mu", "spliced", "unspliced"} <= set(adata.layers)
    with h5py.File(small_atlas_template / "data/processed/rpkm/rpkm.hdf5") as rpkm:
        assert list(adata.obs_names) == rpkm[tissue]["barcode"][()].astype(str).tolist()
    sizes = adata.obs[["initial_size_spliced", "initial_size_unspliced"]].to_numpy()
    assert (sizes == np.round(sizes)).all() and (sizes > 0).all()  # scVelo normalized counts
    tf_list = pd.read_csv(small_atlas_template / "data/raw/tf/tf_list.csv", index_col=0)
    assert set(tf_list["Ensembl ID"]) <= set(adata.var_names)  # every TF kept through the filter
    # The model's genes that scVelo gave a velocity (var['velocity_genes'] marks the ones
    # it fitted best: few, with this few cells).
    modelled = ~np.isnan(adata.layers["true_velocity"]).all(0) & np.isfinite(adata.layers["velocity"]).all(0)
    assert modelled.sum() >= 10 and np.isnan(adata[:, tf_list["Ensembl ID"]].layers["true_velocity"]).all()
    velocity = median_correlation(adata.layers["velocity"][:, modelled], adata.layers["true_velocity"][:, modelled])
    spliced = median_correlation(adata.layers["Ms"][:, modelled], adata.layers["true_spliced"][:, modelled])
    assert -0.1 < velocity < 0.2 < spliced < 1  # measured: about 0.06 and 0.3 at this size


def test_the_counts_file_is_read_as_h5ad_input(atlas, tmp_path):
    """The demo's counts file beside its seed layout, read with data.format: h5ad (the
    genes scVelo fitted: at this size few of the model's genes, so no lasso list)."""
    pytest.importorskip("scvelo")
    from mtlrank_ray.config import config_from_dict
    from mtlrank_ray.data import load_tissue, prepare_store
    (atlas / "results/r2/lasso_r2.csv").unlink()
    config = config_from_dict({"data": {"format": "h5ad", "expression_is_log": True},
                               "genes": {"n_genes": 12, "min_cells": 200, "min_cells_by_tissue": {},
                                         "n_clusters": 3}})
    prepare_store(atlas, config, tmp_path / "store")
    tissue = load_tissue(tmp_path / "store", "Liver")
    adata = anndata.read_h5ad(atlas / "data/h5ad/Liver/Liver.h5ad")
    assert len(tissue.genes) == 12 and adata.var.velocity_genes[list(tissue.genes)].all()
    np.testing.assert_array_equal(tissue.target, adata[:, list(tissue.genes)].layers["velocity"])


@pytest.mark.slow
def test_a_demo_tissue_of_more_than_8192_cells_gets_its_counts_file(tmp_path):
    """From 8,192 cells on scanpy's default neighbour search is another code path (one
    that fails on SciPy's sparse arrays); the demo's must hold at any size."""
    pytest.importorskip("scvelo")
    spec = DemoSpec(**{**SMALL_SPEC.__dict__, "cells": {"Liver": 8300}})
    atlas = write_demo(tmp_path / "demo", spec)
    adata = anndata.read_h5ad(atlas / "data/h5ad/Liver/Liver.h5ad")
    assert adata.n_obs == 8300 and np.isfinite(adata.layers["Ms"]).all()
