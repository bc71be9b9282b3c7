"""The run report: plots of a finished sweep and an HTML page that shows them.

`mtlrank-ray report RUN` (also run at the end of `tune.py`) writes to RUN/report/:

    test_r2.png         test R² per gene, per tissue: the λ chosen on validation, λ = 0 and
                        the lasso baseline
    lambda_curve.png    mean validation R² against λ per tissue (log axis; λ = 0 drawn
                        at the left edge and marked; the lasso's as a dashed line)
    selected_vs_zero.png  per gene: test R² at the selected λ against λ = 0
    singular_values.png   singular values of the Dense(64) kernels stacked over a
                        cluster's genes, λ = 0 against the selected λ (the low rank
                        the trace norm buys), for the first tissue's first cluster
    index.html          the plots and the tables (summary, selected λ, ranking quality)

Each plotting function returns the numbers it drew, so tests check that the
pictures show the results.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import InputError  # noqa: E402
from .data.store import write_atomically  # noqa: E402
from .results import GROUP, LASSO, networks, selected_table, tissue_summary  # noqa: E402
from .trial import Trial  # noqa: E402


def chosen_rows(genes: pd.DataFrame) -> pd.DataFrame:
    """Gene rows at the λ selected for their (tissue, cluster, replicate)."""
    return genes.merge(selected_table(genes)[[*GROUP, "lambda"]], on=[*GROUP, "lambda"])


def plot_test_r2(genes: pd.DataFrame, path: Path) -> dict:
    models = {"selected λ": chosen_rows(genes), "λ = 0": genes[genes["lambda"] == 0],
              "lasso": genes[genes.model == LASSO]}
    tissues = sorted(genes.tissue.unique())
    drawn = {}
    fig, ax = plt.subplots(figsize=(1.6 + 2.4 * len(tissues), 4))
    for i, tissue in enumerate(tissues):
        for k, (label, rows) in enumerate(models.items()):
            values = rows.loc[rows.tissue == tissue, "test_r2"].to_numpy()
            if len(values):
                ax.boxplot(values, positions=[i + 0.27 * (k - 1)], widths=0.24, patch_artist=True,
                           boxprops={"facecolor": f"C{k}"})
                drawn[tissue, label] = values
    ax.set_xticks(range(len(tissues)), tissues)
    ax.set_ylabel("test R² per gene")
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=f"C{k}") for k in range(len(models))], list(models),
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(models), frameon=False)
    _save(fig, path)
    return drawn


def plot_lambda_curve(genes: pd.DataFrame, path: Path) -> dict:
    """Returns {tissue: {λ: mean val R²}} and {(tissue, "lasso"): mean val R²}."""
    network = networks(genes)
    curves = network.groupby(["tissue", "lambda"]).val_r2.mean()
    lasso = genes[genes.model == LASSO].groupby("tissue").val_r2.mean()
    positive = sorted(lam for lam in network["lambda"].unique() if lam > 0)
    zero_at = positive[0] / 10 if positive else 1e-4  # where λ = 0 sits on the log axis
    drawn = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (tissue, curve) in enumerate(curves.groupby(level="tissue")):
        lambdas = curve.index.get_level_values("lambda").to_numpy()
        x = np.where(lambdas > 0, lambdas, zero_at)
        ax.plot(x, curve.to_numpy(), marker="o", color=f"C{k}", label=tissue)
        drawn[tissue] = dict(zip(lambdas, curve.to_numpy()))
        if tissue in lasso.index:
            ax.axhline(lasso[tissue], color=f"C{k}", linestyle="--", linewidth=1,
                       label=f"{tissue}: lasso")
            drawn[tissue, LASSO] = lasso[tissue]
    ax.axvline(zero_at, color="grey", linestyle=":", label="λ = 0")
    ax.set_xscale("log")
    ax.set_xlabel("λ (trace-norm weight)")
    ax.set_ylabel("mean validation R²")
    ax.legend(fontsize="small")
    _save(fig, path)
    return drawn


def plot_selected_vs_zero(genes: pd.DataFrame, path: Path) -> pd.DataFrame:
    key = ["tissue", "cluster", "replicate", "gene"]
    pairs = chosen_rows(genes)[[*key, "test_r2"]].merge(
        genes[genes["lambda"] == 0][[*key, "test_r2"]], on=key, suffixes=("_selected", "_zero"))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for tissue, part in pairs.groupby("tissue"):
        ax.scatter(part.test_r2_zero, part.test_r2_selected, s=10, label=tissue)
    low = min(pairs.test_r2_zero.min(), pairs.test_r2_selected.min(), 0) if len(pairs) else 0
    ax.plot([low, 1], [low, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("test R², λ = 0")
    ax.set_ylabel("test R², selected λ")
    ax.legend()
    _save(fig, path)
    return pairs


def plot_singular_values(genes: pd.DataFrame, models: Path, path: Path) -> dict:
    """Singular values of the stacked Dense(64) kernels, λ = 0 against the selected λ."""
    selected = selected_table(genes)
    candidates = selected[selected["lambda"] > 0]
    pick = (candidates if len(candidates) else selected).iloc[0]
    drawn = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for lam in sorted({0.0, float(pick["lambda"])}):
        name = Trial(pick.tissue, int(pick.cluster), int(pick.replicate), lam).name
        with np.load(models / f"{name}.npz") as saved:
            kernel = saved["dense_64_kernel"]
        values = np.linalg.svd(kernel.reshape(kernel.shape[0], -1), compute_uv=False)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=f"λ = {lam:g}")
        drawn[lam] = values
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(f"{pick.tissue}, cluster {pick.cluster}, replicate {pick.replicate}: Dense(64)")
    ax.legend()
    _save(fig, path)
    return drawn


def write_report(out: Path) -> Path:
    out = Path(out)
    if not (out / "gene_r2.parquet").is_file():
        raise InputError(f"{out / 'gene_r2.parquet'} is missing; report on a folder that "
                         "`python tune.py` finished.")
    genes = pd.read_parquet(out / "gene_r2.parquet")
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    plot_test_r2(genes, folder / "test_r2.png")
    plot_lambda_curve(genes, folder / "lambda_curve.png")
    plot_selected_vs_zero(genes, folder / "selected_vs_zero.png")
    plots = ["test_r2.png", "lambda_curve.png", "selected_vs_zero.png"]
    if (out / "models").is_dir() and (genes["lambda"] == 0).any():
        plot_singular_values(genes, out / "models", folder / "singular_values.png")
        plots.append("singular_values.png")
    selected = selected_table(genes)
    tables = {"Per tissue": tissue_summary(genes, selected), "λ chosen on validation": selected}
    if (out / "ranking_quality.csv").is_file():
        tables["TF ranking quality against the planted regulators"] = pd.read_csv(
            out / "ranking_quality.csv")
    body = [f"<h1>MTLRank sweep: {html.escape(str(out))}</h1>"]
    body += [f'<p><img src="{name}" alt="{name}"></p>' for name in plots]
    for title, table in tables.items():
        body += [f"<h2>{html.escape(title)}</h2>", table.to_html(index=False, float_format="%.3f")]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>MTLRank sweep</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    write_atomically(folder / "index.html", lambda p: Path(p).write_text(page))
    return folder / "index.html"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    write_atomically(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
