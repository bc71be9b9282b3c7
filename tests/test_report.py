"""The report's plots show the results' numbers; the page shows the plots and tables."""

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from mtlrank_ray.analysis import report
from mtlrank_ray.analysis.baselines import BaselineFit
from mtlrank_ray.analysis.results import gene_table, write_results
from mtlrank_ray.cli import main


def fake_run(folder):
    """Results of 2 tissues x 2 clusters x λ in {0, 0.01, 0.1} and both baselines, and the
    networks' models."""
    rng = np.random.default_rng(0)
    trials, baselines = [], []
    (folder / "models").mkdir(parents=True)
    for tissue in ("Kidney_Left", "Liver"):
        for cluster in (0, 1):
            genes = [f"{tissue}-{cluster}-{g}" for g in range(5)]
            for lam in (0.0, 0.01, 0.1):
                val = rng.uniform(0, 0.6, 5) + (0.1 if lam == 0.01 else 0)
                trials.append(({"tissue": tissue, "cluster": cluster, "replicate": 0, "lambda": lam},
                               {"genes": genes, "best_val_r2": list(val), "best_test_r2": list(val - 0.05),
                                "best_epoch": 3, "epoch": 4}))
                kernel = rng.normal(size=(5, 7, 64)).astype(np.float32) / (1 + 100 * lam)
                np.savez(folder / "models" / f"{tissue}_c{cluster}_r0_lambda{lam:g}.npz",
                         genes=np.array(genes), dense_64_kernel=kernel)
            for method, setting in (("lasso", 0.01), ("grnboost2", 700)):
                val = rng.uniform(0, 0.4, 5)
                baselines.append(((tissue, cluster, 0),
                                  BaselineFit(method, genes, np.full(5, setting), np.zeros((5, 7)),
                                              val, val - 0.1)))
    genes = gene_table(trials, epochs=4, baselines=baselines)
    write_results(folder, genes, [], "fake")
    return genes


def test_plots_draw_the_results(tmp_path):
    genes = fake_run(tmp_path)
    drawn = report.plot_test_r2(genes, tmp_path / "a.png")
    zero = genes[genes["lambda"] == 0]
    np.testing.assert_array_equal(drawn["Liver", "λ = 0"], zero[zero.tissue == "Liver"].test_r2)
    chosen = report.at_selected(genes, report.selected_table(genes))
    assert set(chosen["lambda"]) == {0.01}  # the planted winner on validation
    np.testing.assert_array_equal(drawn["Liver", "selected"], chosen[chosen.tissue == "Liver"].test_r2)
    lasso = genes[genes.model == "lasso"]
    assert len(lasso) == 20 and lasso["lambda"].isna().all()
    np.testing.assert_array_equal(drawn["Liver", "lasso"], lasso[lasso.tissue == "Liver"].test_r2)
    boosted = genes[genes.model == "grnboost2"]
    assert len(boosted) == 20 and (boosted.trees == 700).all() and boosted.alpha.isna().all()
    np.testing.assert_array_equal(drawn["Liver", "GRNBoost2"], boosted[boosted.tissue == "Liver"].test_r2)
    curve = report.plot_lambda_curve(genes, tmp_path / "b.png")
    kidney = genes[genes.tissue == "Kidney_Left"]
    expected = kidney[kidney.model == "mtlrank"].groupby("lambda").val_r2.mean()
    assert curve["Kidney_Left"] == pytest.approx(expected.to_dict())
    for method in ("lasso", "grnboost2"):
        assert curve["Kidney_Left", method] == pytest.approx(kidney[kidney.model == method].val_r2.mean())
    pairs = report.plot_selected_vs_zero(genes, tmp_path / "c.png")
    assert len(pairs) == 20 and (pairs.test_r2_selected.to_numpy() != pairs.test_r2_zero.to_numpy()).all()
    low, high = pairs[["test_r2_zero", "test_r2_selected"]].min().min(), pairs[["test_r2_zero", "test_r2_selected"]].max().max()
    assert high < 0.8  # the axes end near the data, not at an R² of 1
    panels = report.plot_singular_values(genes, tmp_path / "models", tmp_path / "d.png")
    assert sorted(panels) == [("Kidney_Left", 0), ("Kidney_Left", 1), ("Liver", 0), ("Liver", 1)]
    for (tissue, cluster), values in panels.items():  # every cluster, λ = 0 beside the chosen λ
        for lam in (0.0, 0.01):
            with np.load(tmp_path / "models" / f"{tissue}_c{cluster}_r0_lambda{lam:g}.npz") as saved:
                np.testing.assert_allclose(values[lam], np.linalg.svd(
                    saved["dense_64_kernel"].reshape(5, -1), compute_uv=False), rtol=1e-5)
        assert values[0.0].sum() > values[0.01].sum()
    for name in "abcd":
        image = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 0.01  # not blank


def test_report_command_writes_the_page(tmp_path, capsys):
    fake_run(tmp_path)
    pd.DataFrame({"tissue": "Liver", "method": "mtlrank (DeepLIFT)",
                  "measure": ["average precision", "precision at 10", "early precision ratio"],
                  "value": [0.5, 0.2, 3.0], "low": [0.4, 0.1, 2.0], "high": [0.6, 0.3, 4.0],
                  "chance": [0.05, 0.05, 1.0], "over_chance_low": [0.36, 0.05, 1.0],
                  "over_chance_high": [0.55, 0.25, 3.0], "verdict": "above chance",
                  "genes": 20}).to_csv(tmp_path / "evaluation.csv", index=False)
    pd.DataFrame({"tissue": ["Liver"] * 3, "gene": ["g1", "g1", "g2"], "gene_symbol": ["ALB", "ALB", ""],
                  "tf": ["t1", "t2", "t1"], "tf_symbol": ["HNF4A", "FOXA2", "HNF4A"],
                  "mean_rank": [1.0, 2.5, 1.5]}).to_csv(tmp_path / "network.csv", index=False)
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    names = ("test_r2.png", "lambda_curve.png", "selected_vs_zero.png", "singular_values.png", "network.png")
    for name in names:
        assert f'src="{name}"' in page and (tmp_path / "report" / name).stat().st_size > 10_000
    # Every plot has a caption; tables have plain headers and a line saying what they hold.
    assert page.count("<figcaption>") == len(names) == page.count("<img ")
    assert "Validation R², lasso" in page and "lasso_mean_val_r2" not in page
    assert "Mean test R², GRNBoost2" in page and "Validation R², GRNBoost2" in page
    assert page.count("<h2>") == 5 and page.count("</table>") == 4  # bottom line, 3 tables, the run
    # The bottom line first: right under the title, before any plot: fit, then rankings.
    assert page.index("</h1>\n<h2>Bottom line</h2>") < page.index("<img")
    assert page.index("Fit, on held-out cells") < page.index("<h3>TF rankings") < page.index("<img")
    assert ("<li>Liver: 1 of 1 methods' rankings beat chance: mtlrank (DeepLIFT) above "
            "chance (AP 0.500, chance 0.050, difference [+0.360, +0.550]).</li>") in page
    assert "<li>Liver: the chosen networks' mean test R² is " in page
    # The run's facts and config on the page.
    assert "<th>versions</th><td>mtlrank-ray " in page and "<th>run folder</th>" in page
    assert "Kidney_Left" in page and "against the reference network" in page
    assert "0.500 [0.400, 0.600]" in page  # a value with its interval over genes


def test_the_fit_bottom_line_says_above_below_or_level_by_the_interval():
    """Planted: the chosen networks beat λ = 0 by 0.1 on every gene, tie with the lasso
    up to noise, and lose to GRNBoost2 by 0.1."""
    from mtlrank_ray.analysis.results import fit_bottom_line, gene_table, selected_table

    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(30)]
    base = rng.uniform(0.2, 0.5, 30)
    trials = [({"tissue": "Liver", "cluster": 0, "replicate": 0, "lambda": lam},
               {"genes": genes, "best_val_r2": list(base + shift), "best_test_r2": list(base + shift),
                "best_epoch": 3, "epoch": 4}) for lam, shift in ((0.0, 0.0), (0.01, 0.1))]
    fits = [(("Liver", 0, 0), BaselineFit("lasso", genes, np.full(30, 0.01), np.zeros((30, 7)), base,
                                           base + 0.1 + rng.normal(0, 0.02, 30))),
            (("Liver", 0, 0), BaselineFit("grnboost2", genes, np.full(30, 700), np.zeros((30, 7)), base,
                                           base + 0.2))]
    table = gene_table(trials, epochs=4, baselines=fits)
    (line,) = fit_bottom_line(table, selected_table(table))
    assert line.startswith(f"Liver: the chosen networks' mean test R² is {base.mean() + 0.1:.3f}, "
                           f"above λ = 0 ({base.mean():.3f}; difference +0.100 [+0.100, +0.100]), "
                           "level with lasso (")
    assert "below GRNBoost2" in line and line.endswith("difference -0.100 [-0.100, -0.100]).")


def test_the_network_picture_marks_the_references_edges(tmp_path):
    network = pd.DataFrame({"tissue": "Liver", "gene": ["g1", "g1", "g2"], "gene_symbol": ["ALB", "ALB", "APOA1"],
                            "tf": ["t1", "t2", "t1"], "tf_symbol": ["HNF4A", "FOXA2", "HNF4A"],
                            "mean_rank": [1.0, 2.0, 4.0]})
    reference = pd.DataFrame({"tissue": ["Liver", "Liver", "Kidney_Left"], "gene": ["g2", "g9", "g1"],
                              "tf": ["t1", "t1", "t2"]})
    drawn = report.plot_network(network, tmp_path / "n.png", reference)
    (row, column), = drawn["Liver", "reference"]  # only (t1, g2) is both drawn and Liver's
    assert (drawn["Liver"].index[row], drawn["Liver"].columns[column]) == ("t1", "g2")


def test_the_network_picture_shows_mean_ranks_with_symbols(tmp_path):
    network = pd.DataFrame({"tissue": "Liver", "gene": ["g1", "g1", "g2", "g3"],
                            "gene_symbol": ["ALB", "ALB", "", "APOA1"], "tf": ["t1", "t2", "t1", "t2"],
                            "tf_symbol": ["HNF4A", "FOXA2", "HNF4A", "FOXA2"],
                            "mean_rank": [1.0, 2.0, 4.0, 1.0]})
    drawn = report.plot_network(network, tmp_path / "n.png")["Liver"]
    assert drawn.loc["t1", "g2"] == 4.0 and np.isnan(drawn.loc["t1", "g3"])
    assert sorted(drawn.index) == ["t1", "t2"] and sorted(drawn.columns) == ["g1", "g2", "g3"]


def test_the_lambda_curve_draws_lambda_zero_apart_from_the_log_axis(tmp_path):
    genes = fake_run(tmp_path)
    drawn = report.plot_lambda_curve(genes, tmp_path / "b.png")
    assert list(drawn["Liver", "log axis"]) == [0.01, 0.1]  # no stand-in position for λ = 0
    assert drawn["Liver", "λ = 0 panel"] == pytest.approx([drawn["Liver"][0.0]])


def test_captions_show_setting_names_as_code(tmp_path):
    fake_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<code>search.baselines</code>" in page and "`" not in page


def test_a_searched_learning_rate_is_plotted_and_each_lambda_counts_its_best_rate(tmp_path):
    rng = np.random.default_rng(1)
    trials = []
    for cluster in (0, 1):
        genes = [f"g{cluster}-{g}" for g in range(4)]
        for lam in (0.0, 0.1):
            for rate in (0.001, 0.01):
                val = rng.uniform(0, 0.3, 4) + (0.2 if rate == 0.01 else 0)
                trials.append(({"tissue": "Liver", "cluster": cluster, "replicate": 0, "lambda": lam,
                                "learning_rate": rate},
                               {"genes": genes, "best_val_r2": list(val), "best_test_r2": list(val),
                                "best_epoch": 2, "epoch": 4}))
    genes = gene_table(trials, epochs=4, baselines=[])
    drawn = report.plot_search_space(genes, tmp_path / "s.png")
    points = drawn["Liver", "learning_rate"]
    expected = genes.groupby(["learning_rate", "lambda"]).val_r2.mean()
    assert len(points) == 4
    for row in points.to_dict("records"):
        assert row["val_r2"] == pytest.approx(expected[row["learning_rate"], row["lambda"]])
    # The λ curve counts each group at its best rate for that λ (here 0.01), not the mean over rates.
    curve = report.plot_lambda_curve(genes, tmp_path / "c.png")
    best = genes[genes.learning_rate == 0.01].groupby("lambda").val_r2.mean()
    assert curve["Liver"] == pytest.approx(best.to_dict())
    pairs = report.plot_selected_vs_zero(genes, tmp_path / "z.png")
    zero = genes[(genes["lambda"] == 0)].set_index(["cluster", "gene", "learning_rate"]).test_r2
    chosen = report.selected_table(genes).set_index("cluster").learning_rate
    for row in pairs.to_dict("records"):
        assert row["test_r2_zero"] == zero[row["cluster"], row["gene"], chosen[row["cluster"]]]
    assert matplotlib.image.imread(tmp_path / "s.png").shape[2] in (3, 4)


def test_the_lambda_curve_shows_the_clusters_choices_above_every_single_lambda(tmp_path):
    """Clusters that choose different λ: each fixed λ's mean lies below the mean of the
    choices, which the left panel draws beside λ = 0 (a reader saw a contradiction)."""
    best = {0: 0.1, 1: 1.0}  # each cluster's winning λ
    trials = []
    for cluster in (0, 1):
        genes = [f"g{cluster}-{g}" for g in range(3)]
        for lam in (0.0, 0.1, 1.0):
            val = [0.5 if lam == best[cluster] else 0.2] * 3
            trials.append(({"tissue": "Liver", "cluster": cluster, "replicate": 0, "lambda": lam},
                           {"genes": genes, "best_val_r2": val, "best_test_r2": val,
                            "best_epoch": 2, "epoch": 4}))
    genes = gene_table(trials, epochs=4, baselines=[])
    curve = report.plot_lambda_curve(genes, tmp_path / "c.png")
    assert curve["Liver"] == pytest.approx({0.0: 0.2, 0.1: 0.35, 1.0: 0.35})
    assert curve["Liver", "chosen"] == pytest.approx(0.5)
