"""How well each ranking method recovers a reference network, tissue by tissue.

A reference is a CSV of edges: columns `tf` and `gene` (Ensembl ids or symbols
the data's id mapping knows) and optionally `tissue`; an edge without a tissue
(no column, or a blank) holds in every tissue. The demo's planted truth (truth/regulators.csv) is one
such reference. Per tissue and method, over the tissue's genes with at least
one reference regulator among its TFs:

- average precision of the gene's TF ranking, the mean over genes (chance: the
  expected average precision of a random ranking, which exceeds the share of
  TFs that are regulators when they are few);
- AUROC of the gene's TF ranking, the mean over genes whose TFs are not all
  regulators (chance: 0.5);
- precision at k: the share of the gene's k top TFs that are regulators (chance:
  the share of TFs that are regulators);
- the early precision ratio (BEELINE's EPR): the precision of the tissue's top
  K edges, K the number of reference edges among them, over the density of
  reference edges (chance: 1);

each with a 95% bootstrap interval over genes (the same resamples for every
method), and a verdict from the interval of the measure minus its chance value
(per resample, so average precision's per-gene chance moves with the genes):
"above chance" only where that interval lies above 0, "below chance" where it
lies below, "not distinguishable from chance" otherwise. A method's verdict in
the tables is its average precision's (`VERDICT_MEASURE`).

Methods: our DeepLIFT rankings, the lasso's |coefficients| and GRNBoost2's
split gains, each by its rank averaged over replicates, and |Pearson
correlation| over the gene's cells. Every
method's edges are ranked within their gene, ties in a seeded random order, and
the early precision ratio orders edges by that rank, so the measures treat
every method alike. Each measure of every other method is also set against
ours: our value minus its, with the interval of that difference over the same
resamples (paired over genes).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from ..data import load_tissue
from ..data.references import (
    ID_MAP,
    gene_ids,
    normalize_tissue,
    read_csv_checked,
    read_id_map,
)
from ..data.store import read_manifest, read_parquet, write_atomically
from ..errors import InputError
from .baselines import BASELINES, RANKING, BaselineFit, baseline_name
from .results import signed_interval

log = logging.getLogger(__name__)

OURS, PEARSON = "mtlrank (DeepLIFT)", "abs Pearson"
K = 10
BOOTSTRAP = 1000
SEED = 0
MEASURES = ("average precision", "AUROC", "precision at k", "early precision ratio")
VERDICT_MEASURE = "average precision"
ABOVE, BELOW, CHANCE = "above chance", "below chance", "not distinguishable from chance"

Scores = tuple[list[str], np.ndarray, np.ndarray]  # genes, TFs, scores (genes x TFs; higher first)


def read_reference(path: Path, store: str, tissues: list[str]) -> pd.DataFrame:
    """(tissue, gene, tf) edges in the data's ids, one row per tissue an edge holds in."""
    table = read_csv_checked(Path(path), ["tf", "gene"], "reference network",
                             fix="pass a CSV with columns tf, gene and optionally tissue (see "
                                 "README, 'Evaluating rankings')")
    if "tissue" not in table.columns:
        table["tissue"] = np.nan
    everywhere = table.tissue.isna() | (table.tissue.astype(str).str.strip() == "")
    named = table[~everywhere].assign(tissue=lambda t: [
        name if name in tissues else normalize_tissue(name) for name in t.tissue.astype(str)])
    unknown = sorted(set(named.tissue) - set(tissues))
    if unknown:
        if everywhere.sum() == 0 and len(unknown) == named.tissue.nunique():
            raise InputError(f"reference network {path} names tissues {', '.join(unknown[:3])}, none "
                             f"of the run's ({', '.join(tissues)}); use the run's tissue names.")
        log.warning("reference network %s: tissues %s are not in the run; their edges are left out",
                    path, ", ".join(unknown[:5]))
    table = pd.concat([named, *[table[everywhere].assign(tissue=t) for t in tissues]], ignore_index=True)
    id_map = data_id_map(store, tissues[0])
    for column in ("tf", "gene"):
        names = pd.Index(table[column].astype(str))
        table[column] = gene_ids(names, id_map, f"reference network {path} ({column})")
    return table.loc[(table.tf != "") & (table.gene != ""), ["tissue", "gene", "tf"]].drop_duplicates()


def planted_truth(store: str, tissue: str) -> Path | None:
    """The demo's truth (a reference), or None for data without one."""
    path = _data_root(store, tissue) / "truth" / "regulators.csv"
    return path if path.is_file() else None


def _data_root(store: str, tissue: str) -> Path:
    manifest = read_manifest(store, tissue)
    if manifest is None:
        raise InputError(f"the run's store {store} has no tissue {tissue}; rerun the sweep.")
    return Path(manifest["data_root"])


def data_id_map(store: str, tissue: str) -> pd.DataFrame:
    """The id mapping of the data the store was prepared from (empty if it is gone)."""
    path = _data_root(store, tissue) / ID_MAP
    if path.is_file():
        return read_id_map(path)
    return pd.DataFrame({"ensembl_id": [], "gene_symbol": []})


def run_scores(rankings: pd.DataFrame, models: Path, store: str) -> dict[tuple[str, str], Scores]:
    """Every method's scores, per (tissue, method), from a run's rankings and models."""
    scores = {}
    for tissue_name, part in rankings.groupby("tissue", observed=True):
        tissue = load_tissue(store, str(tissue_name))
        mean_rank = part.groupby(["gene", "tf"], observed=True)["rank"].mean().unstack()
        mean_rank = mean_rank.reindex(columns=tissue.tfs)
        scores[tissue_name, OURS] = (mean_rank.index.astype(str).tolist(), np.asarray(tissue.tfs),
                                     -mean_rank.to_numpy(np.float64))
        for method in BASELINES:
            ranks = _baseline_ranks(part, models, str(tissue_name), method)
            if ranks is not None:
                scores[tissue_name, RANKING[method]] = (ranks.index.tolist(), np.asarray(tissue.tfs),
                                                                 -ranks.to_numpy())
        scores[tissue_name, PEARSON] = (list(tissue.genes), np.asarray(tissue.tfs), _pearson_scores(tissue))
    return scores


def _baseline_ranks(rankings: pd.DataFrame, models: Path, tissue: str, method: str) -> pd.DataFrame | None:
    """Genes x TFs: the rank of a baseline's importance (1 = largest, ties averaged),
    mean over replicates; None without every replicate's model."""
    frames = []
    for cluster, replicate in rankings[["cluster", "replicate"]].drop_duplicates().itertuples(index=False):
        path = models / f"{baseline_name(tissue, cluster, replicate, method)}.npz"
        if not path.is_file():
            return None
        fit = BaselineFit.load(path)
        frames.append(pd.DataFrame(rankdata(-fit.importance, axis=1), index=fit.genes))
    return pd.concat(frames).groupby(level=0, sort=False).mean()


def _pearson_scores(tissue) -> np.ndarray:
    """Genes x TFs: |Pearson correlation| of expression with the target over each gene's cells."""
    rows = []
    for g in range(len(tissue.genes)):
        cells = ~np.isnan(tissue.target[:, g])
        rows.append(_abs_pearson(tissue.expression[cells].astype(np.float64),
                                 tissue.target[cells, g].astype(np.float64)))
    return np.stack(rows)


def _abs_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Pearson correlation| of each column of x with y; 0 for a constant column."""
    x, y = x - x.mean(axis=0), y - y.mean()
    norms = np.sqrt(np.sum(x ** 2, axis=0) * np.sum(y ** 2))
    return np.abs(np.divide(x.T @ y, norms, out=np.zeros(x.shape[1]), where=norms > 0))


def evaluate(scores: dict[tuple[str, str], Scores], reference: pd.DataFrame, k: int = K,
             bootstrap: int = BOOTSTRAP, seed: int = SEED) -> pd.DataFrame:
    """One row per (tissue, method, measure): value, 95% interval, chance, genes."""
    rows = []
    for tissue in sorted({t for t, _ in scores}):
        edges = reference[reference.tissue == tissue]
        regulators = edges.groupby("gene").tf.apply(set).to_dict()
        methods = [(m, scores[tissue, m]) for t, m in scores if t == tissue]
        # Genes every method scores, with a regulator among the tissue's TFs.
        tfs = methods[0][1][1]
        common = set.intersection(*(set(genes) for _, (genes, _, _) in methods))
        genes = [g for g in methods[0][1][0] if g in common and regulators.get(g, set()) & set(tfs)]
        if not genes:
            continue
        labels = np.array([np.isin(tfs, list(regulators[g])) for g in genes])
        rng = np.random.default_rng([seed, zlib.crc32(tissue.encode())])
        counts = np.stack([np.bincount(rng.integers(0, len(genes), len(genes)), minlength=len(genes))
                           for _ in range(bootstrap)])  # genes' multiplicities, per resample
        tie_break = rng.random(labels.shape)  # the same for every method
        mixed = labels.any(axis=1) & ~labels.all(axis=1)  # genes AUROC is defined for
        chance = {"average precision": _random_average_precision(labels),  # per gene
                  "AUROC": np.where(mixed, 0.5, np.nan),
                  "precision at k": labels.mean(axis=1)}
        tissue_rows = []
        for method, (method_genes, method_tfs, values) in methods:
            if list(method_tfs) != list(tfs):
                raise ValueError(f"{method} scores other TFs than the tissue's")
            position = {g: i for i, g in enumerate(method_genes)}
            matrix = _strict(values[[position[g] for g in genes]], tie_break)
            per_gene = {"average precision": np.array([average_precision_score(l, s) for l, s in zip(labels, matrix)]),
                        "AUROC": np.array([roc_auc_score(l, s) if m else np.nan
                                           for l, s, m in zip(labels, matrix, mixed)]),
                        "precision at k": _precision_at(labels, matrix, min(k, len(tfs)))}
            for measure, value in per_gene.items():
                if not np.isnan(value).all():  # AUROC: not where every TF of every gene regulates
                    tissue_rows.append(_row(tissue, method, measure, value, chance[measure], counts, k))
            epr = _early_precision_ratio(labels, matrix)
            resampled = np.array([epr(c) for c in counts])
            tissue_rows.append(_summary(tissue, method, "early precision ratio", epr(np.ones(len(genes))),
                                        resampled, 1.0, resampled - 1.0, len(genes), k))
        rows += _against_ours(tissue_rows)
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["tissue", "method", "measure", "value", "low", "high", "chance", "over_chance_low",
           "over_chance_high", "verdict", "genes", "ours_minus", "ours_minus_low", "ours_minus_high"]


def _against_ours(rows: list[dict]) -> list[dict]:
    """The rows with our rankings' value minus each method's, and its 95% interval from
    the same resamples (paired over genes); empty where our rankings are not evaluated."""
    ours = {r["measure"]: (r["value"], r["resampled"]) for r in rows if r["method"] == OURS}
    for row in rows:
        resampled = row.pop("resampled")
        if row["measure"] not in ours or row["method"] == OURS:
            row.update(ours_minus=np.nan, ours_minus_low=np.nan, ours_minus_high=np.nan)
            continue
        value, mine = ours[row["measure"]]
        low, high = np.nanpercentile(mine - resampled, [2.5, 97.5])
        row.update(ours_minus=value - row["value"], ours_minus_low=float(low), ours_minus_high=float(high))
    return rows


def with_reference(evaluation: pd.DataFrame, reference: Path) -> pd.DataFrame:
    return evaluation.assign(reference=str(reference))


def _row(tissue, method, measure, value, chance, counts, k) -> dict:
    """A per-gene measure's row: means over the genes it is defined for, each resample's
    (`counts`: the genes' multiplicities) for the intervals."""
    defined = ~np.isnan(value)
    value, chance, counts = value[defined], chance[defined], counts[:, defined]
    weights = counts.sum(axis=1)
    resampled = counts @ value / weights
    return _summary(tissue, method, measure, value.mean(), resampled, chance.mean(),
                    resampled - counts @ chance / weights, int(defined.sum()), k)


def _summary(tissue, method, measure, value, resampled, chance, over_chance, genes, k) -> dict:
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    over_low, over_high = np.nanpercentile(over_chance, [2.5, 97.5])
    verdict = ABOVE if over_low > 0 else BELOW if over_high < 0 else CHANCE
    return {"tissue": tissue, "method": method, "measure": measure.replace("at k", f"at {k}"),
            "value": float(value), "low": float(low), "high": float(high), "chance": float(chance),
            "over_chance_low": float(over_low), "over_chance_high": float(over_high),
            "verdict": verdict, "genes": genes, "resampled": resampled}


def _strict(scores: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Scores ranking each gene's TFs strictly: by score, ties in a seeded random order
    (so a method that cannot tell TFs apart scores as chance, not by the store's TF
    order), as -rank within the gene; across genes, equal ranks in the same random order
    (the early precision ratio's edge order)."""
    order = np.lexsort((tie_break, -np.nan_to_num(scores, nan=-np.inf)), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return -ranks - tie_break


def _random_average_precision(labels: np.ndarray) -> np.ndarray:
    """Per gene, the expected average precision of a random ranking of N TFs, R of them
    regulators: (1/N) ((R - 1)/(N - 1) (N - H_N) + H_N), H_N the N-th harmonic number
    (Bestgen 2015); above R/N when R is small."""
    n = labels.shape[1]
    r = labels.sum(axis=1)
    harmonic = np.sum(1.0 / np.arange(1, n + 1))
    return ((r - 1) / max(n - 1, 1) * (n - harmonic) + harmonic) / n


def _precision_at(labels: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(labels, top, axis=1).mean(axis=1)


def _early_precision_ratio(labels: np.ndarray, scores: np.ndarray):
    """EPR as a function of the genes' multiplicities (1 each: the data; a bootstrap
    resample otherwise): the precision of the top K edges over the edge density."""
    n_tfs = labels.shape[1]
    order = np.argsort(-scores.ravel(), kind="stable")
    gene_of, hit = order // n_tfs, labels.ravel()[order]
    true_per_gene = labels.sum(axis=1)

    def ratio(multiplicity: np.ndarray) -> float:
        true_edges = multiplicity @ true_per_gene
        weights = multiplicity[gene_of]
        reached = np.cumsum(weights)
        at = np.searchsorted(reached, true_edges)  # the top K edges end here
        precision = np.cumsum(weights * hit)[at] / reached[at]
        return float(precision / (true_edges / (multiplicity.sum() * n_tfs)))

    return ratio


def wide(evaluation: pd.DataFrame) -> pd.DataFrame:
    """One row per (tissue, method): each measure as 'value [low, high]', chance beside it."""
    cells = evaluation.assign(text=[f"{r.value:.3f} [{r.low:.3f}, {r.high:.3f}]"
                                    for r in evaluation.itertuples()])
    table = cells.pivot(index=["tissue", "method"], columns="measure", values="text")
    chance = cells.pivot(index=["tissue", "method"], columns="measure", values="chance")
    measures = list(dict.fromkeys(evaluation.measure))
    out = pd.DataFrame(index=table.index)
    for measure in measures:
        out[measure] = table[measure]
        if not measure.startswith("early precision"):
            out[f"{measure}, chance"] = chance[measure].map(lambda v: f"{v:.3f}")
    out["genes"] = evaluation.groupby(["tissue", "method"]).genes.first()
    if "verdict" in evaluation:  # evaluation.csv of a run before verdicts has none
        out["verdict"] = verdicts(evaluation).set_index(["tissue", "method"]).verdict
    if "ours_minus" in evaluation:
        ap = evaluation[evaluation.measure == VERDICT_MEASURE].set_index(["tissue", "method"])
        out[f"{VERDICT_MEASURE}, ours minus this"] = [
            "" if np.isnan(r.ours_minus) else signed_interval(r.ours_minus, r.ours_minus_low, r.ours_minus_high)
            for r in ap.reindex(out.index).itertuples()]
    return out.reset_index()


def verdicts(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per (tissue, method): the verdict of VERDICT_MEASURE, its value and chance."""
    rows = evaluation[evaluation.measure == VERDICT_MEASURE]
    paired = [c for c in ("ours_minus", "ours_minus_low", "ours_minus_high") if c in rows]  # not in older runs'
    return rows[["tissue", "method", "verdict", "value", "chance", "over_chance_low", "over_chance_high",
                 *paired]]


def bottom_line(evaluation: pd.DataFrame) -> list[str]:
    """One sentence per tissue: which methods' rankings beat chance, in average precision,
    and where ours stand against each other method's (the difference's interval)."""
    lines = []
    for tissue, part in verdicts(evaluation).groupby("tissue", sort=True):
        said = [f"{r.method} {r.verdict} (AP {r.value:.3f}, chance {r.chance:.3f}, "
                f"difference {signed_interval(None, r.over_chance_low, r.over_chance_high)})"
                for r in part.itertuples()]
        above = part.verdict.eq(ABOVE).sum()
        head = ("no method's rankings beat chance" if not above
                else f"{above} of {len(part)} methods' rankings beat chance")
        line = f"{tissue}: {head}: " + "; ".join(said) + "."
        compared = part.dropna(subset=["ours_minus_low"]) if "ours_minus_low" in part else part.iloc[:0]
        if len(compared):
            line += f" In AP, {OURS} is " + ", ".join(
                f"{_standing(r.ours_minus_low, r.ours_minus_high)} {r.method} (difference "
                f"{signed_interval(r.ours_minus, r.ours_minus_low, r.ours_minus_high)})"
                for r in compared.itertuples()) + "."
        lines.append(line)
    return lines


def in_brief(evaluation: pd.DataFrame) -> list[str]:
    """A line per tissue for the console: our rankings' average precision, its chance
    and verdict, and where ours stand against each other method (ahead of, level with,
    behind: the paired difference's interval). Without our rankings, each method's verdict."""
    rows = evaluation[evaluation.measure == VERDICT_MEASURE]
    lines = []
    for tissue, part in rows.groupby("tissue", sort=True):
        ours = part[part.method == OURS]
        if ours.empty:
            lines.append(f"{tissue}: " + "; ".join(f"{r.method} {r.verdict}" for r in part.itertuples()) + ".")
            continue
        row = ours.iloc[0]
        standings: dict[str, list[str]] = {}
        for other in part.dropna(subset=["ours_minus_low"]).itertuples():
            standings.setdefault(_standing(other.ours_minus_low, other.ours_minus_high), []).append(other.method)
        lines.append(f"{tissue}: ours {row.value:.3f} [{row.low:.3f}, {row.high:.3f}], chance "
                     f"{row.chance:.3f}: {row.verdict}"
                     + "".join(f"; {word} {', '.join(methods)}" for word, methods in standings.items()) + ".")
    return lines


def _standing(low: float, high: float) -> str:
    return "ahead of" if low > 0 else "behind" if high < 0 else "level with"


def run_store(out: Path) -> str:
    """Where a finished run folder's aligned store is (its config.yaml says)."""
    from ..config import load_config

    return load_config(Path(out) / "config.yaml").run.store(Path(out))


def evaluate_run(out: Path, reference: Path, lam: float | None = None, k: int = K) -> pd.DataFrame:
    """Evaluate a finished run folder's rankings (of the selected λ, or `lam`) against the
    reference network at `reference`; writes evaluation<suffix>.csv and returns it."""
    out = Path(out)
    suffix = "" if lam is None else f"_lambda{lam:g}"
    path = out / f"rankings{suffix}.parquet"
    if not path.is_file():
        again = f"mtlrank-ray rank {out} --lambda {lam:g}" if lam is not None else "python tune.py"
        raise InputError(f"{path} is missing; run `{again}` first.")
    store = run_store(out)
    rankings = read_parquet(path)
    tissues = sorted(rankings.tissue.astype(str).unique())
    if k < 1:
        raise InputError(f"--k {k}: precision at k needs k of at least 1.")
    evaluation = with_reference(evaluate(run_scores(rankings, out / "models", store),
                                         read_reference(reference, store, tissues), k), reference)
    if evaluation.empty:
        raise InputError(f"no gene of the run has a regulator of {reference} among its TFs; "
                         "check that the reference names the run's genes and TFs.")
    write_evaluation(out, evaluation, suffix)
    return evaluation


def write_evaluation(out: Path, evaluation: pd.DataFrame, suffix: str = "") -> None:
    write_atomically(Path(out) / f"evaluation{suffix}.csv", lambda p: evaluation.to_csv(p, index=False))
