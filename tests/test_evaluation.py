"""Rankings against a reference network: per tissue, with chance and intervals beside."""

import numpy as np
import pandas as pd
import pytest

from mtlrank_ray.analysis.evaluation import ABOVE, BELOW, CHANCE, OURS, bottom_line, evaluate, in_brief, wide

TFS = np.array([f"tf{i}" for i in range(20)])


def scores_ranking_first(genes, first):
    """Scores that rank, for each gene, the TFs in first[gene] at the top."""
    matrix = np.tile(-np.arange(len(TFS), dtype=float), (len(genes), 1)) - 100
    for g, gene in enumerate(genes):
        for r, tf in enumerate(first[gene]):
            matrix[g, list(TFS).index(tf)] = 10 - r
    return genes, TFS, matrix


def test_a_gene_regulated_differently_in_two_tissues_is_judged_by_each_tissues_edges():
    genes = ["g1", "g2"]
    scores = {("Liver", "ours"): scores_ranking_first(genes, {"g1": ["tf1"], "g2": ["tf3"]}),
              ("Kidney", "ours"): scores_ranking_first(genes, {"g1": ["tf2"], "g2": ["tf3"]})}
    reference = pd.DataFrame({"tissue": ["Liver", "Kidney", "Liver", "Kidney"],
                              "gene": ["g1", "g1", "g2", "g2"], "tf": ["tf1", "tf2", "tf3", "tf3"]})
    table = evaluate(scores, reference, k=1, bootstrap=50).set_index(["tissue", "measure"])
    for tissue in ("Liver", "Kidney"):
        assert table.loc[(tissue, "average precision"), "value"] == 1.0  # a union over tissues: 0.75
        assert table.loc[(tissue, "precision at 1"), "value"] == 1.0
        assert table.loc[(tissue, "early precision ratio"), "value"] == pytest.approx(20.0)  # 1 / (2 / 40)
        # a random ranking puts the one regulator at rank i with AP 1/i, each i alike
        assert table.loc[(tissue, "average precision"), "chance"] == pytest.approx(
            sum(1 / i for i in range(1, 21)) / 20)
        assert table.loc[(tissue, "precision at 1"), "chance"] == pytest.approx(1 / 20)


def test_a_ranking_at_chance_reads_as_chance():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(300)]
    reference = pd.DataFrame([("Liver", g, tf) for g in genes for tf in rng.choice(TFS, 3, replace=False)],
                             columns=["tissue", "gene", "tf"])
    # random scores, and scores that cannot tell TFs apart (ties everywhere, as a lasso's
    # zero coefficients): neither may read as better or worse than chance
    no_signal = {("Liver", "random"): (genes, TFS, rng.normal(size=(len(genes), len(TFS)))),
                 ("Liver", "tied"): (genes, TFS, np.zeros((len(genes), len(TFS))))}
    table = evaluate(no_signal, reference, k=5).set_index(["method", "measure"])
    for method in ("random", "tied"):
        for measure in ("average precision", "AUROC", "precision at 5", "early precision ratio"):
            row = table.loc[(method, measure)]
            standard_error = (row.high - row.low) / (2 * 1.96)
            assert abs(row.value - row.chance) < 3 * standard_error, (method, measure)  # chance
            assert row.high - row.low < row.chance  # and an interval narrow enough to say so
            assert row.verdict == CHANCE, (method, measure)
    assert table.loc[("random", "AUROC"), "chance"] == 0.5
    assert bottom_line(table.reset_index()) == [
        "Liver: no method's rankings beat chance: " + "; ".join(
            f"{m} not distinguishable from chance (AP {r.value:.3f}, chance {r.chance:.3f}, difference "
            f"[{r.over_chance_low:+.3f}, {r.over_chance_high:+.3f}])"
            for m in ("random", "tied") for r in [table.loc[(m, "average precision")]]) + "."]


def two_regulators_each(seed: int, n_genes: int = 200):
    """(rng, genes, reference, labels): every gene with two regulators among TFS."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    regulators = {g: list(rng.choice(TFS, 2, replace=False)) for g in genes}
    reference = pd.DataFrame([("Liver", g, tf) for g in genes for tf in regulators[g]],
                             columns=["tissue", "gene", "tf"])
    return rng, genes, reference, np.array([np.isin(TFS, regulators[g]) for g in genes])


def test_the_verdict_says_above_or_below_chance_only_when_the_difference_excludes_zero():
    """Regulators a little ahead of the others, or a little behind: the verdict follows the
    interval of average precision minus its per-gene chance, resampled over genes."""
    rng, genes, reference, labels = two_regulators_each(2)
    noise = rng.normal(size=labels.shape)
    scores = {("Liver", "ahead"): (genes, TFS, noise + 0.8 * labels),
              ("Liver", "behind"): (genes, TFS, noise - 0.8 * labels),
              ("Liver", "faint"): (genes, TFS, noise + 0.02 * labels)}
    table = evaluate(scores, reference).set_index(["method", "measure"])
    verdict = {m: table.loc[(m, "average precision"), "verdict"] for m in ("ahead", "behind", "faint")}
    assert verdict == {"ahead": ABOVE, "behind": BELOW, "faint": CHANCE}
    for method, row in table.xs("average precision", level="measure").iterrows():
        assert row.over_chance_low < row.value - row.chance < row.over_chance_high
    assert table.loc[("ahead", "AUROC"), "value"] > 0.6 > 0.4 > table.loc[("behind", "AUROC"), "value"]
    assert wide(table.reset_index()).set_index("method").verdict.to_dict() == verdict
    assert bottom_line(table.reset_index())[0].startswith("Liver: 1 of 3 methods' rankings beat chance: ahead above chance (AP ")


def test_the_table_is_paired_resampled_and_seeded():
    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(40)]
    reference = pd.DataFrame({"tissue": "Liver", "gene": genes, "tf": rng.choice(TFS, len(genes))})
    same = rng.normal(size=(len(genes), len(TFS)))
    scores = {("Liver", "a"): (genes, TFS, same), ("Liver", "b"): (genes[::-1], TFS, same[::-1])}
    table = evaluate(scores, reference)
    a, b = table[table.method == "a"].reset_index(drop=True), table[table.method == "b"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="method"), b.drop(columns="method"))  # same resamples
    pd.testing.assert_frame_equal(evaluate(scores, reference), table)
    shown = wide(table)
    assert list(shown.columns[:4]) == ["tissue", "method", "average precision", "average precision, chance"]
    assert shown["average precision"].str.match(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$").all()


def test_evaluate_on_a_folder_without_rankings_says_what_to_run(tmp_path, capsys):
    from mtlrank_ray.cli import main
    assert main(["evaluate", str(tmp_path), "--reference", str(tmp_path / "net.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'rankings.parquet'} is missing; run `python tune.py` first" in err
    assert "Traceback" not in err


def test_our_rankings_are_set_against_each_method_paired_over_genes():
    """Ours against a sharper method, one at chance and an exact copy: behind, ahead and
    level, each from the difference's interval over the same resampled genes."""
    rng, genes, reference, labels = two_regulators_each(3)
    ours = rng.normal(size=labels.shape) + 0.8 * labels
    scores = {("Liver", OURS): (genes, TFS, ours),
              ("Liver", "sharper"): (genes, TFS, rng.normal(size=labels.shape) + 2.0 * labels),
              ("Liver", "blind"): (genes, TFS, rng.normal(size=labels.shape)),
              ("Liver", "copy"): (genes[::-1], TFS, ours[::-1])}
    table = evaluate(scores, reference)
    ap = table[table.measure == "average precision"].set_index("method")
    assert ap.loc["copy", ["ours_minus", "ours_minus_low", "ours_minus_high"]].tolist() == [0, 0, 0]
    assert ap.loc["sharper", "ours_minus_high"] < 0 < ap.loc["blind", "ours_minus_low"]
    for method in ("sharper", "blind"):
        row = ap.loc[method]
        assert row.ours_minus == pytest.approx(ap.loc[OURS, "value"] - row.value)
        assert row.ours_minus_low < row.ours_minus < row.ours_minus_high
    assert ap.loc[OURS, ["ours_minus", "ours_minus_low"]].isna().all()
    line = bottom_line(table)[0]
    said = line[line.index(f"In AP, {OURS} is "):]
    assert said.startswith(f"In AP, {OURS} is behind sharper (difference -0.")
    assert ", ahead of blind (difference +0." in said
    assert said.endswith(", level with copy (difference +0.000 [+0.000, +0.000]).")
    shown = wide(table).set_index("method")["average precision, ours minus this"]
    assert shown[OURS] == "" and shown["copy"] == "+0.000 [+0.000, +0.000]"
    assert shown["sharper"].startswith("-0.")
    ours_ap = ap.loc[OURS]
    assert in_brief(table) == [
        f"Liver: ours {ours_ap.value:.3f} [{ours_ap.low:.3f}, {ours_ap.high:.3f}], chance "
        f"{ours_ap.chance:.3f}: above chance; behind sharper; ahead of blind; level with copy."]
    others = in_brief(table[table.method != OURS])
    assert others == ["Liver: sharper above chance; blind not distinguishable from chance; "
                      "copy above chance."]


def test_an_interval_that_excludes_zero_never_reads_as_touching_it():
    from mtlrank_ray.analysis.results import signed_interval
    assert signed_interval(0.045, 0.0003, 0.0904) == "+0.045 [+0.0003, +0.090]"
    assert signed_interval(None, -0.00004, 0.0) == "[-4e-05, +0.000]"
    assert signed_interval(-0.1, -0.2, -0.0012) == "-0.100 [-0.200, -0.001]"
