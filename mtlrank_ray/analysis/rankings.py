"""TF rankings and the regulatory network from a sweep.

For every (tissue, cluster, replicate), the model of the λ chosen on
validation scores each TF for each gene by its summed |DeepLIFT contribution|
over the gene's cells with velocity (all splits), using the training split's
standardization (`group_rankings`, run as a Ray task during the sweep as soon
as a group's trials are done, or here by `rank_run` on a finished run
folder). Written to the run folder:

    rankings.parquet   tissue, cluster, gene, gene_symbol, replicate, tf, tf_symbol, score,
                       rank (1 = strongest); the text columns categorical
    network.csv        tissue, gene, gene_symbol, tf, tf_symbol, mean_rank: TFs in the top
                       K of every replicate (the paper's consensus step; K a tenth of the
                       tissue's TFs by default)
    evaluation.csv     on data with a planted truth (the demo's truth/), how well our
                       rankings, the baselines' importances and |Pearson| recover it
                       (`evaluation`; `mtlrank-ray evaluate` does so for any reference)

`rank_run(RUN, lam=X)` ranks the models of one λ instead (fetching them from
the sweep's storage) and writes rankings_lambda<X>.parquet and network_lambda<X>.csv.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import SearchConfig, load_config
from ..core.cluster_data import SPLITS, ClusterData, prepare_splits, replicate_split
from ..core.trial import Trial, load_model
from ..data import load_tissue
from ..data.store import write_atomically
from ..errors import InputError
from ..run_storage import experiment_path, fetch_models
from .evaluation import (
    data_id_map,
    evaluate,
    planted_truth,
    read_reference,
    run_scores,
    with_reference,
    write_evaluation,
)

TOP_FRACTION = 0.1  # the network's default size: a tenth of the tissue's TFs per gene
CATEGORICAL = ("tissue", "gene", "tf")


def group_rankings(tissue: str, cluster: int, replicate: int, data: ClusterData, tfs: np.ndarray,
                   weights: dict[str, np.ndarray], search: SearchConfig) -> pd.DataFrame:
    """Rows (tissue, cluster, gene, replicate, tf, score, rank) of one model's rankings."""
    from ..core.attribution import tf_scores  # TensorFlow: only where models are ranked
    splits = prepare_splits(data, replicate_split(search, len(data.expression), replicate), "train")
    cells = [np.sort(np.concatenate([splits[s].cells[g] for s in SPLITS]))
             for g in range(len(data.genes))]
    scores = tf_scores(weights, data.expression, data.act_mean, data.act_sum,
                       splits["train"].standardization, cells)
    return _ranking_rows(tissue, cluster, data.genes, replicate, tfs, scores)


def _ranking_rows(tissue: str, cluster: int, genes: list[str], replicate: int, tfs: np.ndarray,
                  scores: np.ndarray) -> pd.DataFrame:
    n_genes, n_tfs = scores.shape
    ranks = np.empty((n_genes, n_tfs), np.int32)
    np.put_along_axis(ranks, np.argsort(-scores, axis=1, kind="stable"),
                      np.broadcast_to(np.arange(1, n_tfs + 1, dtype=np.int32), (n_genes, n_tfs)), axis=1)
    return pd.DataFrame({
        "tissue": pd.Categorical([tissue] * scores.size),
        "cluster": np.int32(cluster),
        "gene": pd.Categorical.from_codes(np.repeat(np.arange(n_genes), n_tfs), categories=genes),
        "replicate": np.int32(replicate),
        "tf": pd.Categorical.from_codes(np.tile(np.arange(n_tfs), n_genes), categories=list(tfs)),
        "score": scores.ravel().astype(np.float32), "rank": ranks.ravel()})


def concat_rankings(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The groups' rankings as one table in group order (each group's rows gene by gene,
    TFs in the store's order), the text columns kept categorical
    (a plain concat of differing categories would turn them into Python strings)."""
    if not frames:
        raise InputError("no group has rankings; rerun the sweep.")
    for column in CATEGORICAL:
        union = pd.api.types.union_categoricals([f[column] for f in frames], sort_categories=True).categories
        frames = [f.assign(**{column: f[column].cat.set_categories(union)}) for f in frames]
    return pd.concat(frames, ignore_index=True).sort_values(
        ["tissue", "cluster", "replicate"], kind="stable", ignore_index=True)


def rank_run(out: Path, top: int | None = None, lam: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                              pd.DataFrame | None]:
    """Rank the models of a finished run folder (each group's selected configuration,
    or `lam` at its other settings) and write
    the rankings, network and evaluation; returns them. Each tissue is read once."""
    out = Path(out)
    for needed in ("selected.csv", "config.yaml", "models"):
        if not (out / needed).exists():
            raise InputError(f"{out / needed} is missing; rank a folder that `python tune.py` "
                             "finished (it writes selected.csv, config.yaml, models/).")
    config = load_config(out / "config.yaml")
    selected = pd.read_csv(out / "selected.csv")
    if lam is not None:
        if lam not in config.search.lambdas:
            raise InputError(f"λ={lam:g} was not in the sweep of {out} (its λ grid: "
                             f"{', '.join(f'{v:g}' for v in config.search.lambdas)}).")
        selected = selected.assign(**{"lambda": lam})
        trials = [Trial.from_config(row) for row in selected.to_dict("records")]
        fetch_models(experiment_path(config, out),
                     [t for t in trials if not (out / "models" / f"{t.name}.npz").is_file()], out / "models")
    store = config.run.store(out)
    frames = []
    for tissue_name, chosen in selected.groupby("tissue"):
        tissue = load_tissue(store, tissue_name)
        for pick in chosen.to_dict("records"):
            trial = Trial.from_config(pick)
            data = ClusterData.from_tissue(tissue, trial.cluster)
            frames.append(group_rankings(tissue_name, trial.cluster, trial.replicate, data,
                                         tissue.tfs, _model_weights(out, data, trial), config.search))
    return write_rankings(out, concat_rankings(frames), top,
                          suffix="" if lam is None else f"_lambda{lam:g}")


def write_rankings(out: Path, rankings: pd.DataFrame, top: int, suffix: str = ""):
    """Write rankings<suffix>.parquet, network<suffix>.csv and, on data with a planted
    truth, evaluation<suffix>.csv; returns (rankings, network, evaluation or None)."""
    out = Path(out)
    config = load_config(out / "config.yaml")
    store = config.run.store(out)
    rankings = with_symbols(rankings, store)
    network = consensus_network(rankings, top)
    network = network.merge(rankings[["gene", "gene_symbol"]].drop_duplicates("gene"), on="gene")
    network = network.merge(rankings[["tf", "tf_symbol"]].drop_duplicates("tf"), on="tf")[
        ["tissue", "gene", "gene_symbol", "tf", "tf_symbol", "mean_rank"]].sort_values(
        ["tissue", "gene", "mean_rank"], ignore_index=True)
    write_atomically(out / f"rankings{suffix}.parquet", lambda p: rankings.to_parquet(p, index=False))
    write_atomically(out / f"network{suffix}.csv", lambda p: network.to_csv(p, index=False))
    # An evaluation of earlier rankings no longer describes these.
    (out / f"evaluation{suffix}.csv").unlink(missing_ok=True)
    tissues = sorted(rankings.tissue.astype(str).unique())
    truth = planted_truth(store, tissues[0])
    evaluation = None
    if truth is not None:
        evaluation = with_reference(evaluate(run_scores(rankings, out / "models", store),
                                             read_reference(truth, store, tissues)), truth)
        write_evaluation(out, evaluation, suffix)
    return rankings, network, evaluation


def with_symbols(rankings: pd.DataFrame, store: str) -> pd.DataFrame:
    """Rankings with gene_symbol and tf_symbol beside the ids, from the data's id
    mapping (data/raw/id_mapping/ensembl_to_symbol.csv; "" where it has none)."""
    symbols = _id_symbols(store, str(rankings.tissue.iloc[0]))
    named = {}
    for column in ("gene", "tf"):
        ids = rankings[column].cat
        names, of_category = np.unique([symbols.get(i, "") for i in ids.categories], return_inverse=True)
        named[f"{column}_symbol"] = pd.Categorical.from_codes(of_category[ids.codes], categories=names)
    frame = rankings.drop(columns=list(named), errors="ignore").assign(**named)
    return frame[["tissue", "cluster", "gene", "gene_symbol", "replicate", "tf", "tf_symbol",
                  "score", "rank"]]


def _id_symbols(store: str, tissue: str) -> dict[str, str]:
    """Ensembl id -> symbol of the data the store was prepared from ({} if unknown)."""
    table = data_id_map(store, tissue)
    return dict(zip(table.ensembl_id, table.gene_symbol.fillna("").astype(str)))


def _model_weights(out: Path, data: ClusterData, trial: Trial) -> dict[str, np.ndarray]:
    path = out / "models" / f"{trial.name}.npz"
    if not path.is_file():
        raise InputError(f"{path} is missing: the sweep kept no model for {trial.describe()}; "
                         "rerun it (or --resume it).")
    genes, weights = load_model(path.read_bytes())
    if genes != data.genes:
        raise InputError(f"{path} was trained on other genes than the store's cluster "
                         f"{trial.cluster}; rerun the sweep.")
    return weights


def network_size(n_tfs: int, top: int | None) -> int:
    """TFs per gene in the network: `top`, or by default TOP_FRACTION of the tissue's TFs."""
    return top if top is not None else max(1, math.ceil(TOP_FRACTION * n_tfs))


def consensus_network(rankings: pd.DataFrame, top: int | None) -> pd.DataFrame:
    """(tissue, gene, tf, mean_rank): the TFs in every replicate's top `network_size`."""
    replicates = rankings.groupby(["tissue", "gene"], observed=True).replicate.nunique().rename("replicates")
    sizes = rankings.groupby("tissue", observed=True)["rank"].max().map(lambda n: network_size(n, top))
    inside = rankings[rankings["rank"] <= rankings.tissue.map(sizes).astype(int)]
    kept = inside.groupby(["tissue", "gene", "tf"], observed=True).agg(
        n=("replicate", "nunique"), mean_rank=("rank", "mean")).reset_index()
    kept = kept.merge(replicates.reset_index(), on=["tissue", "gene"])
    kept = kept[kept.n == kept.replicates]
    return kept[["tissue", "gene", "tf", "mean_rank"]].sort_values(
        ["tissue", "gene", "mean_rank"], ignore_index=True)
