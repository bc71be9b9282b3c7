"""Sweep results: per-gene R², the λ chosen on validation, a summary.

Written to the run folder, each file atomically (a re-run replaces them):

    gene_r2.parquet, gene_r2.csv  tissue, cluster, gene, replicate, lambda, val_r2,
                                  test_r2, best_epoch, epochs_run, stopped_early
                                  (R² at the trial's best validation epoch)
    selected.csv                  per (tissue, cluster, replicate): the λ with the best
                                  mean validation R², its mean test R², and λ = 0's beside it
    summary.md                    per-tissue table and what ran
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .data.store import sibling

GENE_COLUMNS = ["tissue", "cluster", "gene", "replicate", "lambda", "val_r2", "test_r2",
                "best_epoch", "epochs_run", "stopped_early"]
GROUP = ["tissue", "cluster", "replicate"]


def collect(results) -> tuple[list[tuple[dict, dict]], list[str]]:
    """(trial spec, last reported metrics) of every trial that reported, and a line
    per failed trial, from a Tune ResultGrid."""
    trials, failed = [], []
    for result in results:
        spec = result.config["trial"]
        if result.metrics and "genes" in result.metrics:
            trials.append((spec, result.metrics))
        if result.error or not result.metrics:
            failed.append(f"{spec}: {result.error}")
    return trials, failed


def gene_table(trials: list[tuple[dict, dict]], epochs: int) -> pd.DataFrame:
    """Rows per gene from (trial spec, last reported metrics) pairs."""
    rows = []
    for spec, metrics in trials:
        for gene, val, test in zip(metrics["genes"], metrics["best_val_r2"], metrics["best_test_r2"]):
            rows.append((spec["tissue"], spec["cluster"], gene, spec["replicate"], spec["lam"], val,
                         test, metrics["best_epoch"], metrics["epoch"], metrics["epoch"] < epochs))
    table = pd.DataFrame(rows, columns=GENE_COLUMNS)
    return table.sort_values(["tissue", "cluster", "replicate", "lambda", "gene"], ignore_index=True)


def selected_table(genes: pd.DataFrame) -> pd.DataFrame:
    means = (genes.groupby([*GROUP, "lambda"])[["val_r2", "test_r2"]].mean()
             .rename(columns={"val_r2": "mean_val_r2", "test_r2": "mean_test_r2"}).reset_index())
    best = means.loc[means.groupby(GROUP)["mean_val_r2"].idxmax()]
    baseline = means[means["lambda"] == 0].drop(columns="lambda").rename(
        columns={"mean_val_r2": "lambda0_mean_val_r2", "mean_test_r2": "lambda0_mean_test_r2"})
    return best.merge(baseline, on=GROUP, how="left").sort_values(GROUP, ignore_index=True)


def tissue_summary(genes: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    chosen = genes.merge(selected[[*GROUP, "lambda"]], on=[*GROUP, "lambda"])
    rows = []
    for tissue, part in genes.groupby("tissue"):
        picked = chosen[chosen.tissue == tissue]
        zero = part[part["lambda"] == 0]
        rows.append({"tissue": tissue, "genes": part.gene.nunique(),
                     "trials": len(part.groupby([*GROUP, "lambda"])),
                     "stopped_early": int(part.groupby([*GROUP, "lambda"]).stopped_early.first().sum()),
                     "test_r2_selected": picked.test_r2.mean(),
                     "test_r2_lambda0": zero.test_r2.mean() if len(zero) else np.nan,
                     "lambdas_selected": ", ".join(f"{lam:g}: {n}" for lam, n in
                                                   selected[selected.tissue == tissue]["lambda"]
                                                   .value_counts().sort_index().items())})
    return pd.DataFrame(rows)


def write_results(out: Path, genes: pd.DataFrame, failed: list[str], about: str) -> pd.DataFrame:
    """Write every results file; returns the per-tissue summary."""
    selected = selected_table(genes)
    summary = tissue_summary(genes, selected)
    write_atomically(out / "gene_r2.parquet", lambda p: genes.to_parquet(p, index=False))
    write_atomically(out / "gene_r2.csv", lambda p: genes.to_csv(p, index=False))
    write_atomically(out / "selected.csv", lambda p: selected.to_csv(p, index=False))
    text = [f"# MTLRank sweep\n\n{about}\n", "## Per tissue\n",
            markdown_table(summary), "",
            "test_r2_selected: mean test R² of the genes at the λ chosen on validation per "
            "(tissue, cluster, replicate); test_r2_lambda0: the independent per-gene networks.",
            "", "## Files\n", "- gene_r2.parquet / gene_r2.csv: every gene, replicate and λ",
            "- selected.csv: the chosen λ per (tissue, cluster, replicate), with λ = 0 beside it"]
    if failed:
        text += ["", "## Failed trials\n", *[f"- {name}" for name in failed]]
    write_atomically(out / "summary.md", lambda p: Path(p).write_text("\n".join(text) + "\n"))
    return summary


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_atomically(path: Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename it into place."""
    temporary = sibling(Path(path), "tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
