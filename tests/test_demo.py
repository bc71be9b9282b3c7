"""The demo atlas: deterministic, in the seed layout, with the structure it claims."""

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SPEC

from mtlrank_ray.dev import demo
from mtlrank_ray.dev.demo import DemoSpec, write_demo
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


def test_rewriting_a_demo_replaces_it(small_atlas_template, tmp_path):
    first = write_demo(tmp_path / "demo", SMALL_SPEC)
    (first / "stale.txt").write_text("old")
    write_demo(tmp_path / "demo", SMALL_SPEC)
    assert not (first / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging left behind


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
