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
from .data.store import read_manifest, write_atomically


METHODS = ("mtlrank (DeepLIFT)", "abs lasso coefficient", "abs Pearson")


def rank_run(out: Path, top: int = 50) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(rankings, network, ranking quality or None without a planted truth), each
    also written to the run folder. Each tissue is read from the store once."""
    out = Path(out)
    for needed in ("selected.csv", "config.yaml", "models"):
        if not (out / needed).exists():
            raise InputError(f"{out / needed} is missing; rank a folder that `python tune.py` "
                             "finished (it writes selected.csv, config.yaml, models/).")
    config = load_config(out / "config.yaml")
    store = config.run.store(out)
    selected = pd.read_csv(out / "selected.csv")
    truth = _planted_truth(store, selected.tissue.iloc[0])
    frames, scored, pearson_done = [], {method: [] for method in METHODS}, set()
    for tissue_name, chosen in selected.groupby("tissue"):
        tissue = load_tissue(store, tissue_name)
        for pick in chosen.to_dict("records"):
            trial = Trial(tissue_name, pick["cluster"], pick["replicate"], pick["lambda"])
            data = ClusterData.from_tissue(tissue, trial.cluster)
            scores = _cluster_scores(out, config, data, trial)
            frames.append(_ranking_rows(tissue_name, data.genes, trial.replicate, tissue.tfs, scores))
            if truth is not None:
                with_pearson = (tissue_name, trial.cluster) not in pearson_done
                pearson_done.add((tissue_name, trial.cluster))
                _score_against_truth(scored, truth, out / "models", trial, data, tissue.tfs,
                                     scores, with_pearson)
    rankings = pd.concat(frames, ignore_index=True)
    network = consensus_network(rankings, top)
    write_atomically(out / "rankings.parquet", lambda p: rankings.to_parquet(p, index=False))
    write_atomically(out / "network.csv", lambda p: network.to_csv(p, index=False))
    quality = None
    if truth is not None:
        quality = pd.DataFrame([{"method": m, "mean_average_precision": np.mean([v[0] for v in values]),
                                 "mean_precision_at_10": np.mean([v[1] for v in values]),
                                 "rankings": len(values)} for m, values in scored.items() if values])
        write_atomically(out / "ranking_quality.csv", lambda p: quality.to_csv(p, index=False))
    return rankings, network, quality


def _ranking_rows(tissue: str, genes: list[str], replicate: int, tfs: np.ndarray,
                  scores: np.ndarray) -> pd.DataFrame:
    """Rows (tissue, gene, replicate, tf, score, rank) of a cluster's (G, T) scores."""
    n_genes, n_tfs = scores.shape
    ranks = np.empty((n_genes, n_tfs), np.int64)
    np.put_along_axis(ranks, np.argsort(-scores, axis=1, kind="stable"),
                      np.broadcast_to(np.arange(1, n_tfs + 1), (n_genes, n_tfs)), axis=1)
    return pd.DataFrame({"tissue": tissue, "gene": np.repeat(genes, n_tfs), "replicate": replicate,
                         "tf": np.tile(tfs, n_genes), "score": scores.ravel(), "rank": ranks.ravel()})


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


def _planted_truth(store: str, tissue: str) -> pd.Series | None:
    """{gene: set of true TFs} of data with a planted truth (the demo's truth/)."""
    manifest = read_manifest(store, tissue)
    if manifest is None:
        raise InputError(f"the run's store {store} has no tissue {tissue}; rerun the sweep.")
    truth_file = Path(manifest["data_root"]) / "truth" / "regulators.csv"
    return pd.read_csv(truth_file).groupby("gene").tf.apply(set) if truth_file.is_file() else None


def _score_against_truth(scored: dict[str, list], truth: pd.Series, models: Path, trial: Trial,
                         data: ClusterData, tfs: np.ndarray, scores: np.ndarray,
                         with_pearson: bool) -> None:
    """Append (average precision, precision at 10) per gene of one cluster and replicate:
    ours, the lasso baseline's |coefficients| and (once per gene) |Pearson|."""
    lasso_path = models / f"{lasso_name(trial.tissue, trial.cluster, trial.replicate)}.npz"
    lasso = None
    if lasso_path.is_file():
        fit = LassoFit.load(lasso_path)
        lasso = dict(zip(fit.genes, fit.coef))
    for g, gene in enumerate(data.genes):
        if gene not in truth.index:
            continue
        labels = np.isin(tfs, list(truth[gene]))
        scored["mtlrank (DeepLIFT)"].append(_precision(labels, scores[g]))
        if lasso is not None:
            scored["abs lasso coefficient"].append(_precision(labels, np.abs(lasso[gene])))
        if with_pearson:
            cells = ~np.isnan(data.velocity[:, g])
            scored["abs Pearson"].append(_precision(labels, _abs_pearson(
                data.expression[cells].astype(np.float64), data.velocity[cells, g].astype(np.float64))))


def _precision(labels: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    top10 = np.argsort(-score, kind="stable")[:10]
    return average_precision_score(labels, score), labels[top10].mean()


def _abs_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Pearson correlation| of each column of x with y; 0 for a constant column."""
    x, y = x - x.mean(axis=0), y - y.mean()
    norms = np.sqrt(np.sum(x ** 2, axis=0) * np.sum(y ** 2))
    return np.abs(np.divide(x.T @ y, norms, out=np.zeros(x.shape[1]), where=norms > 0))
