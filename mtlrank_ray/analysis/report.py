"""The run report: plots of a finished sweep and an HTML page that shows them.

`mtlrank-ray report RUN` (also run at the end of `tune.py`) writes to RUN/report/:

    test_r2.png         test R² per gene, per tissue: the configuration chosen on validation, λ = 0 and
                        the baselines (lasso, GRNBoost2)
    lambda_curve.png    mean validation R² against λ per tissue (log axis; λ = 0 as its
                        own point in a panel beside it; the baselines as flat lines)
    search_space.png    when training keys are searched: mean validation R² of every
                        configuration against each searched key
    selected_vs_zero.png  per gene: test R² at the selected λ against λ = 0
    network.png         per tissue, the network's TFs with the most targets against the
                        genes they regulate (mean rank over replicates), clustered
    singular_values.png   singular values of the Dense(64) kernels stacked over a
                        cluster's genes, λ = 0 against the selected λ (the low rank
                        the trace norm buys), a small panel per cluster
    index.html          the plots, each with a caption saying how to read it, and the
                        tables (summary, selected λ, evaluation) with plain headers

Each plotting function returns the numbers it drew, so tests check that the
pictures show the results.
"""

from __future__ import annotations

import html
import json
import re
from datetime import datetime
from pathlib import Path

import matplotlib
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.trial import Trial  # noqa: E402
from ..data.store import read_parquet, write_atomically  # noqa: E402
from ..errors import InputError  # noqa: E402
from .baselines import BASELINES, LABEL, LINE  # noqa: E402
from .evaluation import bottom_line, read_reference, run_store, wide  # noqa: E402
from .results import (  # noqa: E402
    GROUP,
    at_selected,
    configuration,
    fit_bottom_line,
    networks,
    searched,
    selected_table,
    tissue_summary,
)


def plot_test_r2(genes: pd.DataFrame, path: Path) -> dict:
    selected = selected_table(genes)
    models = {"selected": at_selected(genes, selected), "λ = 0": at_selected(genes, selected, lam=0),
              **{LABEL[m]: genes[genes.model == m] for m in BASELINES if (genes.model == m).any()}}
    tissues = sorted(genes.tissue.unique())
    drawn = {}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(models) * len(tissues), 4))
    for i, tissue in enumerate(tissues):
        for k, (label, rows) in enumerate(models.items()):
            values = rows.loc[rows.tissue == tissue, "test_r2"].to_numpy()
            if len(values):
                ax.boxplot(values, positions=[i + width * (k - (len(models) - 1) / 2)],
                           widths=0.85 * width, patch_artist=True,
                           boxprops={"facecolor": f"C{k}"},
                           medianprops={"color": "black", "linewidth": 1.5})
                drawn[tissue, label] = values
    ax.set_xticks(range(len(tissues)), tissues)
    ax.set_ylabel("test R² per gene")
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=f"C{k}") for k in range(len(models))], list(models),
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(models), frameon=False)
    _save(fig, path)
    return drawn


def plot_lambda_curve(genes: pd.DataFrame, path: Path) -> dict:
    """Mean validation R² against λ: λ > 0 on a log axis, λ = 0 as its own point in a
    narrow panel beside it (a log axis has no 0) with the configuration each cluster
    chose (its λ, per cluster and replicate: above every fixed λ when clusters choose
    differently), each baseline's as a flat line. With searched training keys, each
    group counts at each λ with its best setting there. Returns {tissue: {λ: mean val
    R²}}, {(tissue, method): mean val R²}, {(tissue, "chosen"): mean val R²} and what
    each panel drew."""
    network = networks(genes)
    means = network.groupby([*GROUP, *configuration(genes)]).val_r2.mean().reset_index()
    best = means.loc[means.groupby([*GROUP, "lambda"]).val_r2.idxmax(), [*GROUP, *configuration(genes)]]
    curves = network.merge(best, on=list(best.columns)).groupby(["tissue", "lambda"]).val_r2.mean()
    baselines = {m: genes[genes.model == m].groupby("tissue").val_r2.mean() for m in BASELINES
                 if (genes.model == m).any()}
    chosen = at_selected(genes, selected_table(genes)).groupby("tissue").val_r2.mean()
    drawn = {}
    fig, (zero_ax, ax) = plt.subplots(1, 2, sharey=True, figsize=(8.5, 4), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.4, 6]})
    for k, (tissue, curve) in enumerate(curves.groupby(level="tissue")):
        lambdas = curve.index.get_level_values("lambda").to_numpy()
        values = curve.to_numpy()
        drawn[tissue] = dict(zip(lambdas, values))
        positive = lambdas > 0
        drawn[tissue, "log axis"], drawn[tissue, "λ = 0 panel"] = lambdas[positive], values[~positive]
        ax.plot(lambdas[positive], values[positive], marker="o", color=f"C{k}", label=tissue)
        zero_ax.plot(np.zeros((~positive).sum()), values[~positive], marker="s", color=f"C{k}",
                     linestyle="none")
        if tissue in chosen.index:
            zero_ax.plot([1], [chosen[tissue]], marker="*", markersize=10, color=f"C{k}", linestyle="none")
            drawn[tissue, "chosen"] = chosen[tissue]
        for method, values in baselines.items():
            if tissue in values.index:
                for axis in (zero_ax, ax):
                    axis.axhline(values[tissue], color=f"C{k}", linestyle=LINE[method], linewidth=1)
                drawn[tissue, method] = values[tissue]
    for method in baselines:
        ax.plot([], [], color="grey", linestyle=LINE[method], linewidth=1,
                label=f"{LABEL[method]} (each tissue's colour)")
    zero_ax.set_xticks([0, 1], ["λ = 0", "chosen"], rotation=45, ha="right")  # side by side they overlap
    zero_ax.set_xlim(-0.7, 1.7)
    zero_ax.set_ylabel("mean validation R²")
    ax.set_xscale("log")
    ax.set_xlabel("λ (trace-norm weight)")
    ax.tick_params(left=False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    _save(fig, path)  # the legend beside the panels covers no point
    return drawn


def plot_search_space(genes: pd.DataFrame, path: Path) -> dict:
    """Mean validation R² (over the tissue's genes that were trained so) of every
    configuration against each searched training key, one panel per key; returns
    {(tissue, key): the points drawn}."""
    keys = searched(genes)
    points = networks(genes).groupby(["tissue", *configuration(genes)]).val_r2.mean().reset_index()
    fig, axes = plt.subplots(1, len(keys), figsize=(1.5 + 3.8 * len(keys), 3.8), squeeze=False,
                             sharey=True, layout="constrained")
    drawn = {}
    tissues, lambdas = sorted(points.tissue.unique()), sorted(points["lambda"].unique())
    marker = {lam: "sovD^<>p*"[i % 9] for i, lam in enumerate(lambdas)}  # λ = 0: squares
    for ax, key in zip(axes[0], keys):
        numeric = pd.api.types.is_numeric_dtype(points[key])
        levels = sorted(points[key].unique())
        for (tissue, lam), part in points.groupby(["tissue", "lambda"]):
            x = part[key].astype(float) if numeric else part[key].map(levels.index)
            ax.scatter(x, part.val_r2, s=22, color=f"C{tissues.index(tissue)}", marker=marker[lam], alpha=0.8)
        for tissue, part in points.groupby("tissue"):
            drawn[tissue, key] = part[[key, "lambda", "val_r2"]].reset_index(drop=True)
        if numeric and min(levels) > 0 and max(levels) / min(levels) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(levels)), levels)
        elif len(levels) <= 6:  # the values trained, readable off the axis
            ax.set_xticks([float(v) for v in levels], [f"{v:g}" for v in levels], rotation=30)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(key)
    axes[0, 0].set_ylabel("mean validation R²")
    handles = ([matplotlib.patches.Patch(color=f"C{k}", label=t) for k, t in enumerate(tissues)]
               + [plt.Line2D([], [], color="grey", marker=marker[lam], linestyle="none", label=f"λ = {lam:g}")
                  for lam in lambdas])
    axes[0, -1].legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    _save(fig, path)
    return drawn


def plot_selected_vs_zero(genes: pd.DataFrame, path: Path) -> pd.DataFrame:
    key = ["tissue", "cluster", "replicate", "gene"]
    selected = selected_table(genes)
    pairs = at_selected(genes, selected)[[*key, "test_r2"]].merge(
        at_selected(genes, selected, lam=0)[[*key, "test_r2"]], on=key, suffixes=("_selected", "_zero"))
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for tissue, part in pairs.groupby("tissue"):
        ax.scatter(part.test_r2_zero, part.test_r2_selected, s=10, label=tissue)
    values = pairs[["test_r2_zero", "test_r2_selected"]].to_numpy()
    low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
    low, high = low - 0.05 * (high - low or 1), high + 0.05 * (high - low or 1)
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
    ax.set_xlim(low, high)  # the data's range, the same on both axes (the diagonal at 45°)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("test R², λ = 0")
    ax.set_ylabel("test R², selected configuration")
    fig.legend(loc="outside right upper", fontsize="small")
    _save(fig, path)
    return pairs


SINGULAR_PANELS = 40  # small multiples: a page, not an atlas of them


def plot_singular_values(genes: pd.DataFrame, models: Path, path: Path) -> dict:
    """Per cluster (its first replicate; the first SINGULAR_PANELS, tissue by tissue):
    singular values of the stacked Dense(64) kernels, λ = 0 against the selected λ.
    Returns {(tissue, cluster): {λ: values}}."""
    selected = selected_table(genes)
    picks = selected.sort_values(GROUP).drop_duplicates(["tissue", "cluster"]).head(SINGULAR_PANELS)
    columns = min(5, len(picks))
    rows = -(-len(picks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns + 1.5, 2.2 * rows + 0.8),
                             sharex=True, squeeze=False, layout="constrained")
    drawn = {}
    for ax, pick in zip(axes.flat, picks.to_dict("records")):
        chosen = Trial.from_config(pick)
        drawn[chosen.tissue, chosen.cluster] = {}
        for k, lam in enumerate(sorted({0.0, chosen.lam})):
            saved_model = models / f"{chosen.at(lam).name}.npz"
            if not saved_model.is_file():
                continue
            with np.load(saved_model) as saved:
                kernel = saved["dense_64_kernel"]
            values = np.linalg.svd(kernel.reshape(kernel.shape[0], -1), compute_uv=False)
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", color=f"C{k}",
                    label="λ = 0" if lam == 0 else "chosen λ > 0")
            drawn[chosen.tissue, chosen.cluster][lam] = values
        ax.set_title(f"{chosen.tissue} c{chosen.cluster} (λ {chosen.lam:g})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(picks):]:
        ax.set_visible(False)
    fig.supxlabel("index", fontsize=9)
    fig.supylabel("singular value", fontsize=9)
    handles = {label: line for ax in axes.flat for line, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    _save(fig, path)
    return drawn


CAPTIONS = {
    "test_r2.png": "Test R² of every gene on held-out cells, per tissue: the networks at the "
                   "configuration (λ and any searched setting) chosen on validation for each gene's "
                   "cluster and replicate, the independent per-gene networks (λ = 0, at the chosen "
                   "settings), and the per-gene baselines of `search.baselines` "
                   "on the same inputs and cells (the lasso, GRNBoost2's boosted trees). "
                   "Each box spans the middle half of the genes, the black line is the median and "
                   "the whiskers reach 1.5 box-lengths. 1 is a perfect prediction of the gene's "
                   "velocity; 0 is no better than its mean.",
    "lambda_curve.png": "Mean validation R² (over genes, clusters and replicates) against the "
                        "trace-norm weight λ, per tissue. λ = 0, in the left panel, trains every "
                        "gene's network on its own; a larger λ makes the genes of a cluster share "
                        "more of their first layers. Dashed: the lasso; dotted: GRNBoost2. Each cluster's λ is chosen "
                        "where its own validation R² is highest; the star (\"chosen\") is the mean "
                        "over those choices, so it can lie above every point of the curve, whose "
                        "points each hold one λ for all clusters. With settings searched beside λ "
                        "(`search.space`), each cluster and replicate counts at each λ with its best "
                        "setting there. Early stopping never stops λ = 0 (the baseline trains "
                        "every epoch), whereas a point at λ > 0 averages the best epochs of trials "
                        "it may have stopped at a rung, so the comparison leans towards λ = 0.",
    "search_space.png": "Mean validation R² of every configuration the sweep trained (over the "
                        "genes, clusters and replicates it was trained for), against each "
                        "training setting of `search.space`, one panel per setting; each point is "
                        "one combination of λ (its marker) and the settings. A setting whose points rise "
                        "together to one side is worth moving that way; a wide spread at one "
                        "value means the other settings matter more there. With `search.searcher: optuna` each "
                        "group has its own settings, so each point is one cluster and replicate.",
    "selected_vs_zero.png": "One point per gene and replicate: test R² at the configuration "
                            "chosen on validation against test R² of the independent networks "
                            "(λ = 0, at the chosen configuration's other settings). Above the grey diagonal "
                            "the gene gained from sharing with its cluster; below it, it lost.",
    "singular_values.png": "Singular values of each cluster's Dense(64) layer (its genes' kernels "
                           f"stacked; its first replicate; at most {SINGULAR_PANELS} clusters), at "
                           "λ = 0 and at the chosen λ when that is above 0. A faster fall means the "
                           "genes use fewer shared directions: the low rank the trace norm asks for.",
    "network.png": "The regulatory network's strongest regulators, per tissue: the TFs (rows) in "
                   "the consensus top of the most genes, and for each gene (columns, grouped by "
                   "their regulators) the TF's mean rank over replicates; darker is stronger, "
                   "blank is not in that gene's network. Red circles: the edges of the reference "
                   "the rankings were evaluated against (when there is one), so a dark cell "
                   "without one is a prediction the reference lacks.",
}
COLUMN_NAMES = {
    "tissue": "Tissue", "genes": "Genes", "trials": "Trials", "stopped_early": "Stopped early",
    "test_r2_selected": "Mean test R², chosen", "test_r2_lambda0": "Mean test R², λ = 0",
    "test_r2_lasso": "Mean test R², lasso", "test_r2_grnboost2": "Mean test R², GRNBoost2",
    "lambda_selected": "λ chosen (clusters × replicates)",
    "cluster": "Cluster", "replicate": "Replicate", "lambda": "Chosen λ",
    "mean_val_r2": "Validation R², chosen", "mean_test_r2": "Test R², chosen",
    "lambda0_mean_val_r2": "Validation R², λ = 0", "lambda0_mean_test_r2": "Test R², λ = 0",
    "lasso_mean_val_r2": "Validation R², lasso", "lasso_mean_test_r2": "Test R², lasso",
    "grnboost2_mean_val_r2": "Validation R², GRNBoost2", "grnboost2_mean_test_r2": "Test R², GRNBoost2",
    "method": "Ranking method",
}
TABLE_LINES = {
    "Per tissue": "Mean test R² over the tissue's genes for the chosen configuration, λ = 0 "
                  "and the baselines, and how often each λ (and each value of a searched "
                  "setting) was chosen.",
    "Chosen on validation": "For each cluster and replicate, the configuration (λ and any "
                            "searched setting) with the best mean validation R², with the mean R² "
                            "of its genes beside λ = 0's at the same settings and the baselines'.",
    "TF rankings against the reference network": "How well each method ranks a gene's "
        "regulators in the reference (the demo's planted truth, or `mtlrank-ray evaluate "
        "--reference`) first: mean average precision, AUROC and precision at k (10 unless `--k`) "
        "over genes (a gene with R regulators scores at most R/k), and the early precision ratio: "
        "the share of reference edges among the tissue's K top-ranked edges, K the number of "
        "reference edges, over their share of all edges (1 is chance). Each comes with a 95% "
        "bootstrap interval over genes and what a random ranking scores (for average precision "
        "its expectation, above the share of regulators when they are few). The verdict is "
        "average precision's: \"above chance\" only where the 95% interval of its difference "
        "from chance lies above 0, \"below chance\" where it lies below, \"not "
        "distinguishable from chance\" where it holds 0.",
}
BOTTOM_LINE = ("Fit: each gene's test R² averaged over replicates; a difference is \"above\" or "
               "\"below\" only where its 95% bootstrap interval over genes excludes 0, \"level "
               "with\" otherwise. Rankings: average precision against what a random order scores, "
               "read the same way (the table at the end has every measure). Neither is corrected "
               "for the number of tissues and methods.")
HEATMAP_TFS, HEATMAP_GENES = 20, 60


def plot_network(network: pd.DataFrame, path: Path, reference: pd.DataFrame | None = None) -> dict:
    """Per tissue, mean rank of its most connected TFs (rows) for the genes they
    regulate most (columns, ordered by hierarchical clustering), the reference's edges
    (tissue, gene, tf) marked; returns the matrices and, per tissue, the marked cells."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    tissues = sorted(network.tissue.unique())
    fig, axes = plt.subplots(len(tissues), 1, figsize=(10, 1.2 + 0.28 * HEATMAP_TFS * len(tissues)),
                             squeeze=False, layout="constrained")
    drawn = {}
    for ax, tissue in zip(axes[:, 0], tissues):
        edges = network[network.tissue == tissue]
        label = lambda ids, symbols: [s or i for i, s in zip(ids, symbols)]  # noqa: E731
        tfs = edges.tf.value_counts().index[:HEATMAP_TFS]
        edges = edges[edges.tf.isin(tfs)]
        genes = edges.gene.value_counts().index[:HEATMAP_GENES]
        matrix = edges[edges.gene.isin(genes)].pivot_table(index="tf", columns="gene",
                                                           values="mean_rank", observed=True)
        strength = np.nan_to_num(1.0 / matrix.to_numpy())
        if min(strength.shape) > 1:
            matrix = matrix.iloc[leaves_list(linkage(strength, "average")),
                                 leaves_list(linkage(strength.T, "average"))]
        drawn[tissue] = matrix
        image = ax.imshow(1.0 / matrix.to_numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
        tf_names = edges.drop_duplicates("tf").set_index("tf").tf_symbol.astype(str)
        gene_names = edges.drop_duplicates("gene").set_index("gene").gene_symbol.astype(str)
        ax.set_yticks(range(len(matrix.index)),
                      label(matrix.index, tf_names.reindex(matrix.index).fillna("")), fontsize=7)
        ax.set_xticks(range(len(matrix.columns)),
                      label(matrix.columns, gene_names.reindex(matrix.columns).fillna("")),
                      rotation=90, fontsize=6)
        ax.set_title(f"{tissue}: {len(matrix.index)} TFs with the most targets x "
                     f"{len(matrix.columns)} genes", fontsize=9)
        fig.colorbar(image, ax=ax, label="1 / mean rank", fraction=0.03)
        if reference is not None:
            known = reference[reference.tissue == tissue]
            known = set(zip(known.tf, known.gene))
            marked = [(i, j) for i, tf in enumerate(matrix.index) for j, gene in enumerate(matrix.columns)
                      if (tf, gene) in known]
            drawn[tissue, "reference"] = marked
            if marked:
                rows, columns = zip(*marked)
                ax.scatter(columns, rows, marker="o", s=14, facecolors="none", edgecolors="red",
                           linewidths=0.8, label="a reference edge")
                ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=7, frameon=False)
    _save(fig, path)
    return drawn


def write_report(out: Path) -> Path:
    out = Path(out)
    if not (out / "gene_r2.parquet").is_file():
        raise InputError(f"{out / 'gene_r2.parquet'} is missing; report on a folder that "
                         "`python tune.py` finished.")
    genes = read_parquet(out / "gene_r2.parquet")
    if "target" not in genes:  # a run from before data.target: velocity, the only one then
        genes["target"] = "velocity"
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    plot_test_r2(genes, folder / "test_r2.png")
    plot_lambda_curve(genes, folder / "lambda_curve.png")
    plot_selected_vs_zero(genes, folder / "selected_vs_zero.png")
    plots = ["test_r2.png", "lambda_curve.png", "selected_vs_zero.png"]
    if searched(genes):
        plot_search_space(genes, folder / "search_space.png")
        plots.insert(2, "search_space.png")
    if (out / "models").is_dir() and (genes["lambda"] == 0).any():
        plot_singular_values(genes, out / "models", folder / "singular_values.png")
        plots.append("singular_values.png")
    if (out / "network.csv").is_file():
        network = pd.read_csv(out / "network.csv", keep_default_na=False)
        if {"gene_symbol", "tf_symbol"} <= set(network.columns) and len(network):
            plot_network(network, folder / "network.png", _reference_edges(out, network))
            plots.append("network.png")
    selected = selected_table(genes)
    tables = {"Per tissue": tissue_summary(genes, selected), "Chosen on validation": selected}
    said = {"Fit, on held-out cells": fit_bottom_line(genes, selected)}
    if (out / "evaluation.csv").is_file():
        evaluation = pd.read_csv(out / "evaluation.csv")
        tables["TF rankings against the reference network"] = wide(evaluation)
        if "verdict" in evaluation:
            said[f"TF rankings against {evaluation.reference.iloc[0]}"
                 if "reference" in evaluation else "TF rankings"] = bottom_line(evaluation)
    verdict = ["<h2>Bottom line</h2>"]
    for title, lines in said.items():
        verdict += [f"<h3>{html.escape(title)}</h3><ul>"
                    + "".join(f"<li>{html.escape(line, quote=False)}</li>" for line in lines) + "</ul>"]
    verdict.append(f"<p>{_prose(BOTTOM_LINE)}</p>")
    # λ and the searched settings as written (a learning rate of 0.00343 is not 0.003).
    settings_format = {COLUMN_NAMES.get(key, key): lambda v: "" if pd.isna(v) else f"{v:g}"
                       for key in ("lambda", *searched(genes)) if key != "standardize"}
    names = {**COLUMN_NAMES, **{f"{key}_selected": f"{key} chosen (clusters × replicates)"
                                for key in searched(genes)}}
    targets = ", ".join(genes.target.unique())
    body = [f"<h1>MTLRank sweep: {html.escape(str(out))} (target: {html.escape(targets)})</h1>",
            *verdict]
    body += [f'<figure><img src="{name}" alt="{name}"><figcaption>{_prose(CAPTIONS[name])}'
             "</figcaption></figure>" for name in plots]
    for title, table in tables.items():
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{_prose(TABLE_LINES[title])}</p>",
                 '<div class="wide">' + table.rename(columns=names).to_html(
                     index=False, float_format="%.3f", formatters=settings_format) + "</div>"]
    body += ["<h2>This run</h2>", "<table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in run_facts(out).items())
        + "</table>"]
    if (out / "config.yaml").is_file():
        body.append("<details><summary>config.yaml, as the sweep ran it</summary><pre>"
                    + html.escape((out / "config.yaml").read_text()) + "</pre></details>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>MTLRank sweep</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
            "figure{margin:1.5em 0}figcaption{max-width:50em;color:#333;font-size:0.95em}"
            "img{max-width:100%}.wide{overflow-x:auto}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    write_atomically(folder / "index.html", lambda p: Path(p).write_text(page))
    return folder / "index.html"


def _reference_edges(out: Path, network: pd.DataFrame) -> pd.DataFrame | None:
    """The edges of the reference evaluation.csv was scored against, if it is still there."""
    if not (out / "evaluation.csv").is_file():
        return None
    named = pd.read_csv(out / "evaluation.csv").get("reference")
    if named is None or not Path(named.iloc[0]).is_file():
        return None
    return read_reference(Path(named.iloc[0]), run_store(out), sorted(network.tissue.astype(str).unique()))


def run_facts(out: Path) -> dict[str, str]:
    """What a reader needs to place the page: the run, when, which code, which data."""
    from importlib.metadata import PackageNotFoundError, version

    from ..data.store import read_manifest

    facts = {"run folder": str(out.resolve())}
    if (out / "sweep.json").is_file():
        facts["sweep started"] = json.loads((out / "sweep.json").read_text()).get("created", "")
    facts["report written"] = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    versions = []
    for package in ("mtlrank-ray", "ray", "tensorflow", "numpy"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    facts["versions"] = ", ".join(versions)
    if (out / "config.yaml").is_file():
        store = run_store(out)
        facts["store"] = str(store)
        tissues = read_parquet(out / "gene_r2.parquet", columns=["tissue"]).tissue.unique()
        manifests = [read_manifest(store, str(t)) for t in sorted(tissues)]
        roots = sorted({m["data_root"] for m in manifests if m and "data_root" in m})
        facts["data"] = ", ".join(roots)
    return facts


def _prose(text: str) -> str:
    """A caption as HTML: escaped, `names` as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _save(fig, path: Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    write_atomically(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
