"""One cluster's training data: splits, standardization, batches (notebook step 7).

- Splits: per replicate, the tissue's cells are split once into train / test
  (`test_fraction`, the seed's 0.1) and validation is carved from the
  training cells (`val_fraction`); the same split serves every cluster and λ.
  Per gene, cells whose target is NaN are dropped from each split.
- Standardization of expression and target, per gene: `train` uses the
  training cells' statistics for every split; `per_split` (the seed's) each
  split its own. Population std; where it is 0 the values stay raw.
- Batches as the seed makes them: each epoch every gene's training cells are
  shuffled, resized (`np.resize`) to the largest gene's count and cut into
  batches, so each step takes one batch per gene.

Expression is kept as the tissue's cells x TFs matrix; features are never
materialized per gene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SearchConfig
from ..data.store import AlignedTissue
from ..errors import InputError

SPLITS = ("train", "val", "test")
STATS_CHUNK = 4096  # cells per block when summing statistics (bounds temporaries)


@dataclass
class ClusterData:
    genes: list[str]
    expression: np.ndarray  # (cells, T) float32, log-scaled, the whole tissue
    target: np.ndarray  # (cells, G) float32 (data.target), NaN where there is none
    act_mean: np.ndarray  # (G, T) float32
    act_sum: np.ndarray  # (G, T) float32

    @classmethod
    def from_tissue(cls, tissue: AlignedTissue, cluster: int) -> "ClusterData":
        members = np.flatnonzero(tissue.clusters == cluster)
        if not len(members):
            raise InputError(f"tissue {tissue.name} has no cluster {cluster} (clusters: "
                             f"{', '.join(map(str, np.unique(tissue.clusters)))})")
        return cls(genes=list(tissue.genes[members]), expression=tissue.expression,
                   target=tissue.target[:, members], act_mean=tissue.activity_mean[members],
                   act_sum=tissue.activity_sum[members])


@dataclass
class Standardization:
    """Per gene and TF: e is used as (e - shift) / scale; constant marks std == 0."""
    shift: np.ndarray  # (G, T) float32
    scale: np.ndarray  # (G, T) float32
    constant: np.ndarray  # (G, T) bool


@dataclass
class GeneSplit:
    """One split for every gene: its cells and standardized targets (ragged)."""
    cells: list[np.ndarray]
    target: list[np.ndarray]
    standardization: Standardization


def split_cells(n_cells: int, test_fraction: float, val_fraction: float, seed: int,
                replicate: int) -> dict[str, np.ndarray]:
    """Sorted cell indices of train, val and test for one replicate."""
    order = np.random.default_rng([seed, replicate]).permutation(n_cells)
    n_test = int(np.ceil(test_fraction * n_cells))  # sklearn's train_test_split rounding
    n_val = int(np.ceil(val_fraction * (n_cells - n_test)))
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def replicate_split(search: SearchConfig, n_cells: int, replicate: int) -> dict[str, np.ndarray]:
    """The split the sweep's settings give one replicate (the same for every cluster and λ)."""
    return split_cells(n_cells, search.test_fraction, search.val_fraction, search.seed, replicate)


def prepare_splits(data: ClusterData, split: dict[str, np.ndarray], standardize: str) -> dict[str, GeneSplit]:
    observed = ~np.isnan(data.target)
    cells = {name: [idx[observed[idx, g]] for g in range(len(data.genes))]
             for name, idx in split.items()}
    for name, per_gene in cells.items():
        for gene, idx in zip(data.genes, per_gene):
            if len(idx) < 2:
                raise InputError(f"gene {gene} has {len(idx)} cells with a target value in the {name} "
                                 "split; R² needs at least 2. Raise genes.min_cells or the split "
                                 "fractions.")
    stats = {name: expression_stats(data.expression, cells[name]) for name in
             (SPLITS if standardize == "per_split" else ("train",))}
    y_stats = {name: [_mean_std(data.target[idx, g]) for g, idx in enumerate(cells[name])]
               for name in stats}
    result = {}
    for name in SPLITS:
        source = name if standardize == "per_split" else "train"
        targets = [(data.target[idx, g] - mean) / std for g, (idx, (mean, std))
                   in enumerate(zip(cells[name], y_stats[source]))]
        result[name] = GeneSplit(cells[name], [t.astype(np.float32) for t in targets], stats[source])
    return result


def gene_features(expression: np.ndarray, split: GeneSplit, g: int) -> np.ndarray:
    """Gene g's standardized TF expression over its cells of `split` (a new array)."""
    s = split.standardization
    features = expression[split.cells[g]]  # a copy: safe to modify in place
    features -= s.shift[g]
    features /= s.scale[g]
    return features


def expression_stats(expression: np.ndarray, cells: list[np.ndarray]) -> Standardization:
    """Each gene's mean and population std of every TF over that gene's cells.

    Sums of e and e² over each gene's cells are matrix products with a 0/1
    membership matrix, in float64 and in blocks of cells. A std within float
    rounding of 0 (≤ 1e-6 of the mean's magnitude) counts as 0: the seed's own
    check (`np.std(x) != 0`) only holds exactly for all-zero columns.
    """
    n_genes, (n_cells, n_tfs) = len(cells), expression.shape
    member = np.zeros((n_genes, n_cells), np.float64)
    for g, idx in enumerate(cells):
        member[g, idx] = 1.0
    sums, squares = np.zeros((n_genes, n_tfs)), np.zeros((n_genes, n_tfs))
    for start in range(0, n_cells, STATS_CHUNK):
        block = expression[start:start + STATS_CHUNK].astype(np.float64)
        sums += member[:, start:start + STATS_CHUNK] @ block
        squares += member[:, start:start + STATS_CHUNK] @ np.square(block)
    counts = member.sum(axis=1, keepdims=True)
    mean = sums / counts
    std = np.sqrt(np.maximum(squares / counts - mean ** 2, 0.0))
    constant = std <= 1e-6 * np.maximum(np.abs(mean), 1.0)
    return Standardization(shift=np.where(constant, 0.0, mean).astype(np.float32),
                           scale=np.where(constant, 1.0, std).astype(np.float32),
                           constant=constant)


def r2_scores(ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    """sklearn's r2_score per gene, force_finite: a constant target scores 1 if
    predicted exactly, else 0."""
    safe = np.where(ss_tot > 0, ss_tot, 1.0)
    return np.where(ss_tot > 0, 1.0 - ss_res / safe, np.where(ss_res == 0, 1.0, 0.0))


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    std = float(np.std(values))
    return float(np.mean(values)), (std if std > 0 else 1.0)


def epoch_batches(train: GeneSplit, batch_size: int, rng: np.random.Generator):
    """(cells, targets): (G, max_count) arrays for one epoch, and the batch bounds.

    The seed's order of shuffles: genes by training-cell count, largest first.
    """
    sizes = [len(c) for c in train.cells]
    order = sorted(range(len(sizes)), key=lambda g: sizes[g], reverse=True)
    max_size = sizes[order[0]]
    cells = np.empty((len(sizes), max_size), np.int32)
    targets = np.empty((len(sizes), max_size), np.float32)
    for g in order:
        positions = np.arange(sizes[g])
        rng.shuffle(positions)
        positions = np.resize(positions, max_size)
        cells[g], targets[g] = train.cells[g][positions], train.target[g][positions]
    bounds = list(range(0, max_size, batch_size)) + [max_size]
    return cells, targets, list(zip(bounds[:-1], bounds[1:]))


def pad_cells(cells: list[np.ndarray], chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's cell indices padded to a common multiple of `chunk`, and the 0/1 mask
    of the real ones: (G, length) each."""
    length = -(-max(len(c) for c in cells) // chunk) * chunk
    padded_cells = np.zeros((len(cells), length), np.int32)
    mask = np.zeros((len(cells), length), np.float32)
    for g, idx in enumerate(cells):
        padded_cells[g, :len(idx)], mask[g, :len(idx)] = idx, 1.0
    return padded_cells, mask


def padded(split: GeneSplit, chunk: int):
    """A split's cells and targets padded to a common length, with a 0/1 mask."""
    cells, mask = pad_cells(split.cells, chunk)
    targets = np.zeros(cells.shape, np.float32)
    for g, y in enumerate(split.target):
        targets[g, :len(y)] = y
    return cells, targets, mask
