"""TF rankings and the regulatory network from a finished sweep.

For every (tissue, cluster, replicate), the model of the λ chosen on
validation (selected.csv, models/) scores each TF for each gene by its summed
|DeepLIFT contribution| over the gene's cells with velocity (all splits),
using the training split's standardization. Written to the run folder:

    rankings.parquet   tissue, gene, replicate, tf, score, rank (1 = strongest)
    network.csv        tissue, gene, tf, mean_rank: TFs in the top K of every replicate
                       (the paper's consensus step; K = 50 by default)
    ranking_quality.csv  on data with a planted truth (the demo's truth/), mean per-gene
                       average precision and precision at 10 of our rankings, of the
                       lasso baseline's |coefficients| (same replicates, alpha chosen on
                       validation) and of |Pearson correlation| over the gene's cells
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from .attribution import tf_scores
from .baseline import LassoFit, lasso_name
from .cluster_data import SPLITS, ClusterData, prepare_splits, replicate_split
from .config import load_config
from .data import load_tissue
from .errors import InputError
from .trainer import Trial
from .data.store import write_atomically


def rank_run(out: Path, top: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    for needed in ("selected.csv", "config.yaml", "models", "store"):
        if not (out / needed).exists():
            raise InputError(f"{out / needed} is missing; rank a folder that `python tune.py` "
                             "finished (it writes selected.csv, config.yaml, models/, store/).")
    config = load_config(out / "config.yaml")
    selected = pd.read_csv(out / "selected.csv")
    rows = []
    for tissue_name, chosen in selected.groupby("tissue"):
        tissue = load_tissue(out / "store", tissue_name)
        for pick in chosen.to_dict("records"):
            trial = Trial(tissue_name, pick["cluster"], pick["replicate"], pick["lambda"])
            data = ClusterData.from_tissue(tissue, trial.cluster)
            scores = _cluster_scores(out, config, data, trial)
            for g, gene in enumerate(data.genes):
                order = np.argsort(-scores[g], kind="stable")
                ranks = np.empty(len(order), int)
                ranks[order] = np.arange(1, len(order) + 1)
                rows += [(tissue_name, gene, trial.replicate, tf, score, rank)
                         for tf, score, rank in zip(tissue.tfs, scores[g], ranks)]
    rankings = pd.DataFrame(rows, columns=["tissue", "gene", "replicate", "tf", "score", "rank"])
    network = consensus_network(rankings, top)
    write_atomically(out / "rankings.parquet", lambda p: rankings.to_parquet(p, index=False))
    write_atomically(out / "network.csv", lambda p: network.to_csv(p, index=False))
    return rankings, network


def _cluster_scores(out: Path, config, data: ClusterData, trial: Trial) -> np.ndarray:
    path = out / "models" / f"{trial.name}.npz"
    if not path.is_file():
        raise InputError(f"{path} is missing: the sweep kept no model for {trial.describe()}; "
                         "rerun it (or --resume it).")
    with np.load(path) as saved:
        if list(saved["genes"]) != data.genes:
            raise InputError(f"{path} was trained on other genes than the store's cluster "
                             f"{trial.cluster}; rerun the sweep.")
        weights = {k: saved[k] for k in saved.files if k != "genes"}
    splits = prepare_splits(data, replicate_split(config.search, len(data.expression),
                                                  trial.replicate), "train")
    cells = [np.sort(np.concatenate([splits[s].cells[g] for s in SPLITS]))
             for g in range(len(data.genes))]
    return tf_scores(weights, data.expression, data.act_mean, data.act_sum,
                     splits["train"].standardization, cells)


def consensus_network(rankings: pd.DataFrame, top: int) -> pd.DataFrame:
    replicates = rankings.groupby(["tissue", "gene"]).replicate.nunique().rename("replicates")
    inside = rankings[rankings["rank"] <= top]
    kept = inside.groupby(["tissue", "gene", "tf"]).agg(n=("replicate", "nunique"),
                                                          mean_rank=("rank", "mean")).reset_index()
    kept = kept.merge(replicates.reset_index(), on=["tissue", "gene"])
    kept = kept[kept.n == kept.replicates]
    return kept[["tissue", "gene", "tf", "mean_rank"]].sort_values(
        ["tissue", "gene", "mean_rank"], ignore_index=True)


def ranking_quality(out: Path, rankings: pd.DataFrame) -> pd.DataFrame | None:
    """Mean per-gene average precision and precision at 10 against the planted
    regulators: ours, the lasso baseline's |coefficients| and |Pearson| (None without
    a truth)."""
    out = Path(out)
    manifest = json.loads(next((out / "store").glob("*/manifest.json")).read_text())
    truth_file = Path(manifest["data_root"]) / "truth" / "regulators.csv"
    if not truth_file.is_file():
        return None
    truth = pd.read_csv(truth_file).groupby("gene").tf.apply(set)
    scored: dict[str, list] = {"mtlrank (DeepLIFT)": [], "abs lasso coefficient": [],
                               "abs Pearson": []}
    def quality(labels, score):
        top10 = np.argsort(-score, kind="stable")[:10]
        return average_precision_score(labels, score), labels[top10].mean()

    for tissue_name, ranked in rankings.groupby("tissue"):
        tissue = load_tissue(out / "store", tissue_name)
        lasso: dict[tuple[int, int], dict | None] = {}  # per (cluster, replicate)
        for gene, per_gene in ranked.groupby("gene"):
            if gene not in truth.index:
                continue
            labels = np.isin(tissue.tfs, list(truth[gene]))
            column = list(tissue.genes).index(gene)
            for replicate, part in per_gene.groupby("replicate"):  # one model per replicate
                scores = part.set_index("tf").loc[tissue.tfs, "score"].to_numpy()
                scored["mtlrank (DeepLIFT)"].append(quality(labels, scores))
                key = int(tissue.clusters[column]), int(replicate)
                if key not in lasso:
                    lasso[key] = _lasso_coefficients(out / "models", tissue_name, *key)
                if lasso[key] is not None:
                    scored["abs lasso coefficient"].append(quality(labels, np.abs(lasso[key][gene])))
            cells = ~np.isnan(tissue.velocity[:, column])
            x, y = tissue.expression[cells], tissue.velocity[cells, column]
            with np.errstate(invalid="ignore", divide="ignore"):
                pearson = np.nan_to_num(np.abs(np.corrcoef(x.T, y)[-1, :-1]))
            scored["abs Pearson"].append(quality(labels, pearson))
    table = pd.DataFrame([{"method": m, "mean_average_precision": np.mean([v[0] for v in values]),
                           "mean_precision_at_10": np.mean([v[1] for v in values]),
                           "rankings": len(values)} for m, values in scored.items() if values])
    write_atomically(out / "ranking_quality.csv", lambda p: table.to_csv(p, index=False))
    return table


def _lasso_coefficients(models: Path, tissue: str, cluster: int, replicate: int) -> dict | None:
    """{gene: coefficients over the tissue's TFs} of one lasso baseline file, if any."""
    path = models / f"{lasso_name(tissue, cluster, replicate)}.npz"
    if not path.is_file():
        return None
    fit = LassoFit.load(path)
    return dict(zip(fit.genes, fit.coef))
