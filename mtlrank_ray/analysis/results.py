"""Sweep results: per-gene R², the λ chosen on validation, a summary.

Written to the run folder, each file atomically (a re-run replaces them):

    gene_r2.parquet, gene_r2.csv  tissue, cluster, gene, replicate, model, lambda, alpha,
                                  trees, val_r2, test_r2, best_epoch, epochs_run,
                                  stopped_early. model "mtlrank": the networks, one row
                                  per λ (R² at the trial's best validation epoch); model
                                  "lasso": the per-gene lasso at the alpha chosen on
                                  validation; model "grnboost2": GRNBoost2 with the number
                                  of trees chosen on validation (`baselines`; lambda and
                                  the epoch columns empty)
    selected.csv                  per (tissue, cluster, replicate): the λ with the best
                                  mean validation R², its mean test R², and λ = 0's and
                                  each baseline's beside it
    summary.md                    per-tissue table and what ran
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.store import write_atomically
from .baselines import BASELINES, SETTING, BaselineFit

GENE_COLUMNS = ["tissue", "cluster", "gene", "replicate", "model", "lambda", "alpha", "trees",
                "val_r2", "test_r2", "best_epoch", "epochs_run", "stopped_early"]
GROUP = ["tissue", "cluster", "replicate"]
NETWORK = "mtlrank"


def collect(results) -> tuple[list[tuple[dict, dict]], list[str]]:
    """(trial spec, last reported metrics) of every trial that finished, and a line
    per failed trial, from a Tune ResultGrid. A trial that failed after reporting
    (its retries spent) is only listed: its last report is not a result, and its
    λ is never selected."""
    trials, failed = [], []
    for result in results:
        spec = result.config["trial"]
        if result.error or not result.metrics or "genes" not in result.metrics:
            failed.append(f"{spec}: {type(result.error).__name__ if result.error else 'no result'}")
        else:
            trials.append((spec, result.metrics))
    return trials, failed


def gene_table(trials: list[tuple[dict, dict]], epochs: int,
               baselines: list[tuple[tuple, BaselineFit]], earlier: pd.DataFrame | None = None
               ) -> pd.DataFrame:
    """Rows per gene from (trial spec, last reported metrics) pairs and from the
    baselines' ((tissue, cluster, replicate), BaselineFit) pairs, with the
    `earlier` rows of other tissues the run folder keeps."""
    rows = []
    for spec, metrics in trials:
        for gene, val, test in zip(metrics["genes"], metrics["best_val_r2"], metrics["best_test_r2"]):
            rows.append({"tissue": spec["tissue"], "cluster": spec["cluster"], "gene": gene,
                         "replicate": spec["replicate"], "model": NETWORK, "lambda": spec["lam"],
                         "val_r2": val, "test_r2": test, "best_epoch": metrics["best_epoch"],
                         "epochs_run": metrics["epoch"], "stopped_early": metrics["epoch"] < epochs})
    for (tissue, cluster, replicate), fit in baselines:
        rows += [{"tissue": tissue, "cluster": cluster, "gene": gene, "replicate": replicate,
                  "model": fit.method, SETTING[fit.method]: setting, "val_r2": val, "test_r2": test}
                 for gene, setting, val, test in zip(fit.genes, fit.setting, fit.val_r2, fit.test_r2)]
    table = pd.DataFrame(rows, columns=GENE_COLUMNS).astype(
        {"lambda": float, "alpha": float, "trees": "Int64", "best_epoch": "Int64",
         "epochs_run": "Int64", "stopped_early": "boolean"})
    if earlier is not None:  # a run folder from before a column existed lacks it
        table = pd.concat([earlier.reindex(columns=GENE_COLUMNS).astype(table.dtypes.to_dict()), table])
    return table.sort_values(["tissue", "cluster", "replicate", "model", "lambda", "gene"],
                             ignore_index=True)


def networks(genes: pd.DataFrame) -> pd.DataFrame:
    """The networks' rows (one per λ), without the baselines."""
    return genes[genes.model == NETWORK]


def choose_lambda(mean_val_r2: dict[float, float]) -> float | None:
    """The λ with the best mean validation R² (ties: the smallest λ), as selected.csv
    chooses it; None when no λ has a finite value."""
    finite = {lam: value for lam, value in mean_val_r2.items() if np.isfinite(value)}
    return max(sorted(finite), key=finite.get) if finite else None


def selected_table(genes: pd.DataFrame) -> pd.DataFrame:
    means = (genes.groupby([*GROUP, "model", "lambda"], dropna=False)[["val_r2", "test_r2"]].mean()
             .rename(columns={"val_r2": "mean_val_r2", "test_r2": "mean_test_r2"}).reset_index())
    network = means[means.model == NETWORK].drop(columns="model")
    chosen = network.groupby(GROUP)[["lambda", "mean_val_r2"]].apply(
        lambda g: choose_lambda(dict(zip(g["lambda"], g["mean_val_r2"])))).rename("lambda")
    best = network.merge(chosen.dropna().reset_index(), on=[*GROUP, "lambda"])
    for name, rows in (("lambda0", network[network["lambda"] == 0]),
                       *((method, means[means.model == method]) for method in BASELINES)):
        rows = rows[[*GROUP, "mean_val_r2", "mean_test_r2"]].rename(
            columns={"mean_val_r2": f"{name}_mean_val_r2", "mean_test_r2": f"{name}_mean_test_r2"})
        best = best.merge(rows, on=GROUP, how="left")
    return best.sort_values(GROUP, ignore_index=True)


def tissue_summary(genes: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    chosen = genes.merge(selected[[*GROUP, "lambda"]], on=[*GROUP, "lambda"])
    rows = []
    for tissue, part in genes.groupby("tissue"):
        trials = networks(part).groupby([*GROUP, "lambda"])
        zero = part[part["lambda"] == 0]
        rows.append({"tissue": tissue, "genes": part.gene.nunique(), "trials": trials.ngroups,
                     "stopped_early": int(trials.stopped_early.first().sum()),
                     "test_r2_selected": chosen[chosen.tissue == tissue].test_r2.mean(),
                     "test_r2_lambda0": zero.test_r2.mean() if len(zero) else np.nan,
                     **{f"test_r2_{method}": part[part.model == method].test_r2.mean()
                        for method in BASELINES},
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
            "(tissue, cluster, replicate); test_r2_lambda0: the independent per-gene networks; "
            "test_r2_lasso: the per-gene lasso on the same standardized TF expression and "
            "splits, alpha chosen on validation; test_r2_grnboost2: GRNBoost2's boosted trees "
            "on the same, the number of trees chosen on validation (empty: not in "
            "search.baselines).",
            "", "## Files\n", "- gene_r2.parquet / gene_r2.csv: every gene, replicate and λ, and the baselines",
            "- selected.csv: the chosen λ per (tissue, cluster, replicate), with λ = 0 and the "
            "baselines beside it",
            "- rankings.parquet, network.csv: the TF rankings of the chosen models and the network; "
            "evaluation.csv: the rankings against a reference network (where there is one)",
            "- models/: the models these results use; report/index.html: the plots and tables"]
    if failed:
        text += ["", "## Failed trials and baselines\n", *[f"- {name}" for name in failed]]
    write_atomically(out / "summary.md", lambda p: Path(p).write_text("\n".join(text) + "\n"))
    return summary


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)

