"""Sweep results: per-gene R², the configuration chosen on validation, a summary.

Written to the run folder, each file atomically (a re-run replaces them):

    gene_r2.parquet, gene_r2.csv  tissue, cluster, gene, replicate, model, lambda, a
                                  column per searched training key (`search.space`),
                                  alpha, trees, val_r2, test_r2, best_epoch, epochs_run,
                                  stopped_early, target (data.target: what every model
                                  of the row predicted). model "mtlrank": the networks, one row
                                  per configuration (R² at the trial's best validation
                                  epoch); model
                                  "lasso": the per-gene lasso at the alpha chosen on
                                  validation; model "grnboost2": GRNBoost2 with the number
                                  of trees chosen on validation (`baselines`; lambda and
                                  the epoch columns empty)
    selected.csv                  per (tissue, cluster, replicate): the configuration
                                  (λ and searched keys) with the best mean validation
                                  R², its mean test R², and beside it λ = 0's at the
                                  same settings and each baseline's, and the target
    summary.md                    per-tissue table and what ran
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import INTEGER_KEYS, TRAINING_KEYS
from ..core.trial import Trial
from ..data.store import write_atomically
from .baselines import BASELINES, LABEL, SETTING, BaselineFit

GENE_COLUMNS = ["tissue", "cluster", "gene", "replicate", "model", "lambda", "alpha", "trees",
                "val_r2", "test_r2", "best_epoch", "epochs_run", "stopped_early", "target"]
GROUP = ["tissue", "cluster", "replicate"]
NETWORK = "mtlrank"


def searched(table: pd.DataFrame) -> list[str]:
    """The searched training keys a results table has columns for."""
    return [key for key in TRAINING_KEYS if key in table.columns]


def configuration(table: pd.DataFrame) -> list[str]:
    """The columns that tell a group's trials apart: λ and the searched keys."""
    return ["lambda", *searched(table)]


def collect(results) -> tuple[list[tuple[dict, dict]], list[str]]:
    """(trial spec, last reported metrics) of every trial that finished, and a line
    per failed trial, from a Tune ResultGrid. A trial that failed after reporting
    (its retries spent) is only listed: its last report is not a result, and its
    configuration is never selected."""
    trials, failed = [], []
    for result in results:
        spec = result.config["trial"]
        if result.error or not result.metrics or "genes" not in result.metrics:
            failed.append(f"{spec}: {type(result.error).__name__ if result.error else 'no result'}")
        else:
            trials.append((spec, result.metrics))
    return trials, failed


def gene_table(trials: list[tuple[dict, dict]], epochs: int,
               baselines: list[tuple[tuple, BaselineFit]], earlier: pd.DataFrame | None = None,
               target: str = "velocity") -> pd.DataFrame:
    """Rows per gene from (trial spec, last reported metrics) pairs and from the
    baselines' ((tissue, cluster, replicate), BaselineFit) pairs, with the
    `earlier` rows of other tissues the run folder keeps. `epochs`: training.epochs,
    for trials that do not search it; `target`: data.target of this run's rows."""
    rows, keys = [], {key for spec, _ in trials for key in spec}
    for spec, metrics in trials:
        trial = Trial.from_config(spec)
        for gene, val, test in zip(metrics["genes"], metrics["best_val_r2"], metrics["best_test_r2"]):
            rows.append({**trial.config, "gene": gene, "model": NETWORK, "val_r2": val, "test_r2": test,
                         "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epoch"],
                         "stopped_early": metrics["epoch"] < spec.get("epochs", epochs),
                         "target": target})
    for (tissue, cluster, replicate), fit in baselines:
        rows += [{"tissue": tissue, "cluster": cluster, "gene": gene, "replicate": replicate,
                  "model": fit.method, SETTING[fit.method]: setting, "val_r2": val, "test_r2": test,
                  "target": target}
                 for gene, setting, val, test in zip(fit.genes, fit.setting, fit.val_r2, fit.test_r2)]
    keys = [key for key in TRAINING_KEYS if key in keys or (earlier is not None and key in earlier)]
    columns = [*GENE_COLUMNS[:6], *keys, *GENE_COLUMNS[6:]]
    table = pd.DataFrame(rows, columns=columns).astype(
        {"lambda": float, "alpha": float, "trees": "Int64", "best_epoch": "Int64",
         "epochs_run": "Int64", "stopped_early": "boolean",
         **{key: "Int64" for key in keys if key in INTEGER_KEYS}})
    if earlier is not None:  # a run folder from before a column existed lacks it
        earlier = earlier.reindex(columns=columns).fillna({"target": "velocity"})  # the only one then
        table = pd.concat([earlier.astype(table.dtypes.to_dict()), table])
    return table.sort_values(["tissue", "cluster", "replicate", "model", *configuration(table), "gene"],
                             ignore_index=True)


def networks(genes: pd.DataFrame) -> pd.DataFrame:
    """The networks' rows (one per configuration), without the baselines."""
    return genes[genes.model == NETWORK]


def choose(mean_val_r2: dict[Trial, float]) -> Trial | None:
    """The trial with the best mean validation R² (ties: the smallest λ, then the
    smallest settings), as selected.csv chooses it; None when none is finite."""
    finite = {trial: value for trial, value in mean_val_r2.items() if np.isfinite(value)}
    return max(sorted(finite), key=finite.get) if finite else None


def at_selected(genes: pd.DataFrame, selected: pd.DataFrame, lam: float | None = None) -> pd.DataFrame:
    """The networks' rows at each group's chosen configuration, or at λ = `lam` with
    the chosen configuration's other settings (`lam=0`: its baseline)."""
    keys = selected[[*GROUP, *configuration(genes)]]
    if lam is not None:
        keys = keys.assign(**{"lambda": float(lam)})
    return networks(genes).merge(keys, on=list(keys.columns))


def selected_table(genes: pd.DataFrame) -> pd.DataFrame:
    config = configuration(genes)
    means = (genes.groupby([*GROUP, "model", *config], dropna=False)[["val_r2", "test_r2"]].mean()
             .rename(columns={"val_r2": "mean_val_r2", "test_r2": "mean_test_r2"}).reset_index())
    network = means[means.model == NETWORK].drop(columns="model")
    picks = [choose({Trial.from_config(row): row["mean_val_r2"] for row in part.to_dict("records")})
             for _, part in network.groupby(GROUP)]
    chosen = pd.DataFrame([pick.config for pick in picks if pick is not None], columns=[*GROUP, *config])
    best = network.merge(chosen.astype(network[chosen.columns].dtypes.to_dict()), on=[*GROUP, *config])
    others = [*GROUP, *config[1:]]  # λ = 0 at the chosen configuration's other settings
    for name, rows, on in (("lambda0", network[network["lambda"] == 0], others),
                           *((method, means[means.model == method], GROUP) for method in BASELINES)):
        rows = rows[[*on, "mean_val_r2", "mean_test_r2"]].rename(
            columns={"mean_val_r2": f"{name}_mean_val_r2", "mean_test_r2": f"{name}_mean_test_r2"})
        best = best.merge(rows, on=on, how="left")
    best["target"] = best.tissue.map(genes.groupby("tissue").target.first())
    return best.sort_values(GROUP, ignore_index=True)


def tissue_summary(genes: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    chosen, zeros = at_selected(genes, selected), at_selected(genes, selected, lam=0)
    rows = []
    for tissue, part in genes.groupby("tissue"):
        trials = networks(part).groupby([*GROUP, *configuration(genes)], dropna=False)
        zero = zeros[zeros.tissue == tissue]
        rows.append({"tissue": tissue, "genes": part.gene.nunique(), "trials": trials.ngroups,
                     "stopped_early": int(trials.stopped_early.first().sum()),
                     "test_r2_selected": chosen[chosen.tissue == tissue].test_r2.mean(),
                     "test_r2_lambda0": zero.test_r2.mean() if len(zero) else np.nan,
                     **{f"test_r2_{method}": part[part.model == method].test_r2.mean()
                        for method in BASELINES},
                     **{f"{key}_selected":
                        chosen_values(selected.loc[selected.tissue == tissue, key])
                        for key in configuration(genes)}})
    return pd.DataFrame(rows)


FIT_RESAMPLES, FIT_SEED = 1000, 0


def fit_bottom_line(genes: pd.DataFrame, selected: pd.DataFrame) -> list[str]:
    """One sentence per tissue: the chosen configuration's mean test R² against λ = 0's
    and each baseline's, each difference with a 95% bootstrap interval over genes
    (each gene's R² averaged over replicates; the same seeded resamples for all)."""
    per_gene = {"chosen": at_selected(genes, selected), "λ = 0": at_selected(genes, selected, lam=0),
                **{LABEL[m]: genes[genes.model == m] for m in BASELINES}}
    per_gene = {name: rows.groupby(["tissue", "gene"]).test_r2.mean() for name, rows in per_gene.items()
                if len(rows)}
    lines = []
    for tissue, chosen in per_gene["chosen"].groupby(level="tissue", sort=True):
        said = []
        for name, other in per_gene.items():
            if name == "chosen" or tissue not in other.index.get_level_values("tissue"):
                continue
            pair = pd.concat([chosen, other.loc[[tissue]]], axis=1, join="inner").to_numpy()
            difference = pair[:, 0] - pair[:, 1]
            picks = np.random.default_rng(FIT_SEED).integers(0, len(difference),
                                                              (FIT_RESAMPLES, len(difference)))
            low, high = np.percentile(difference[picks].mean(axis=1), [2.5, 97.5])
            word = "above" if low > 0 else "below" if high < 0 else "level with"
            said.append(f"{word} {name} ({pair[:, 1].mean():.3f}; difference "
                        f"{signed_interval(difference.mean(), low, high)})")
        lines.append(f"{tissue}: the chosen networks' mean test R² is {chosen.mean():.3f}, "
                     + ", ".join(said) + ".")
    return lines


def signed_interval(value: float | None, low: float, high: float) -> str:
    """'+0.066 [+0.019, +0.121]' (the value left out when None); a bound that rounds to
    0 keeps a significant digit, so an interval that excludes 0 never reads [+0.000, ...]."""
    def signed(x: float) -> str:
        return f"{x:+.1g}" if 0 < abs(x) < 0.0005 else f"{x:+.3f}"
    return ("" if value is None else f"{signed(value)} ") + f"[{signed(low)}, {signed(high)}]"


def chosen_values(values: pd.Series) -> str:
    """How often each value was chosen ('0: 3, 0.01: 5'), or the range of many."""
    counts = values.value_counts().sort_index()
    text = [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in counts.index]
    if len(counts) > 6:
        return f"{text[0]} to {text[-1]} ({len(counts)} values)"
    return ", ".join(f"{v}: {n}" for v, n in zip(text, counts))


def write_results(out: Path, genes: pd.DataFrame, failed: list[str], about: str) -> pd.DataFrame:
    """Write every results file; returns the per-tissue summary."""
    selected = selected_table(genes)
    summary = tissue_summary(genes, selected)
    write_atomically(out / "gene_r2.parquet", lambda p: genes.to_parquet(p, index=False))
    write_atomically(out / "gene_r2.csv", lambda p: genes.to_csv(p, index=False))
    write_atomically(out / "selected.csv", lambda p: selected.to_csv(p, index=False))
    text = [f"# MTLRank sweep\n\n{about}\n", "## Per tissue\n",
            markdown_table(summary), "",
            "test_r2_selected: mean test R² of the genes at the configuration (λ and any searched "
            "setting) chosen on validation per (tissue, cluster, replicate); test_r2_lambda0: the "
            "independent per-gene networks at the chosen settings; <key>_selected: how often each "
            "value was chosen; "
            "test_r2_lasso: the per-gene lasso on the same standardized TF expression and "
            "splits, alpha chosen on validation; test_r2_grnboost2: GRNBoost2's boosted trees "
            "on the same, the number of trees chosen on validation (empty: not in "
            "search.baselines).",
            "", "## Files\n", "- gene_r2.parquet / gene_r2.csv: every gene, replicate and configuration, and the baselines",
            "- selected.csv: the chosen configuration per (tissue, cluster, replicate), with λ = 0 "
            "and the baselines beside it",
            "- rankings.parquet, network.csv: the TF rankings of the chosen models and the network; "
            "evaluation.csv: the rankings against a reference network (where there is one)",
            "- models/: the models these results use; report/index.html: the plots and tables",
            "- config.yaml: the run's settings; sweep.json: the record of the sweep these results "
            "come from (its trials, baselines and rankings stay in the sweep's storage)"]
    if failed:
        text += ["", "## Failed trials and baselines\n", *[f"- {name}" for name in failed]]
    write_atomically(out / "summary.md", lambda p: Path(p).write_text("\n".join(text) + "\n"))
    return summary


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)

