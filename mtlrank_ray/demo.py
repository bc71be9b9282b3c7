"""A synthetic atlas in the seed layout, with the truth it was drawn from.

What is planted, so that each part of the pipeline has something to find:

- cells carry a few continuous latent states; each expressed TF's
  log10(RPKM + 1) is a noisy, zero-inflated function of them, and some TFs
  are never expressed at all;
- genes fall into regulatory programs; each program has a few true TFs and a
  low-rank ReLU response to them, shared by every gene of the program, which
  mixes it with its own weights (so multi-task sharing has structure to find);
- each gene's velocity is that signal plus Gaussian noise whose level sets a
  known R² ceiling, with a gene-specific share of cells missing (NaN), some
  genes below the cell thresholds;
- activity scores are enriched at true (TF, gene) pairs, with empty cells,
  TFs and genes without scores and symbols the id mapping lacks;
- the lasso list names tissues the notebook's way ("Kidney (Left)") and
  lists genes the data lacks.

Written: DIR/data/... and DIR/results/r2/lasso_r2.csv exactly as the seed
reads them (see README, "Data layout"), and DIR/truth/: regulators.csv
(gene, tf, program, weight; one network for every tissue), genes.csv (tissue, gene, program,
noise_sd, n_cells, r2_ceiling: the R² of the noise-free signal on the cells
with velocity) and params.json. The same seed gives the same files' contents.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .data.references import ID_MAP, LASSO, TF_LIST, normalize_tissue
from .data.seed_layout import MEAN_TF, RPKM, SUM_TF, VELO
from .data.store import install, sibling
from .errors import InputError


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 0
    cells: dict[str, int] = field(default_factory=lambda: {"Kidney (Left)": 3000, "Liver": 1500})
    n_tfs: int = 60  # TFs in the expression matrix
    n_silent_tfs: int = 6  # of those, never expressed
    n_genes: int = 160  # velocity genes per tissue
    n_expression_only_genes: int = 20  # in expression, without velocity
    n_programs: int = 4
    regulators_per_program: int = 3
    program_rank: int = 2
    n_latent_states: int = 3
    r2_ceiling_range: tuple[float, float] = (0.3, 0.9)
    missing_fraction_range: tuple[float, float] = (0.0, 0.55)


def write_demo(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo atlas to `out` (replaced whole, atomically); returns `out`."""
    out = Path(out)
    if out.exists() and not (out / "truth" / "params.json").is_file():
        raise InputError(f"{out} exists and is not a demo atlas; choose a new folder (an "
                         "earlier demo there would be replaced).")
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = pd.read_csv(files("mtlrank_ray").joinpath("resources/demo_genes.csv"))
    tf_pool, gene_pool = ids[ids["is_tf"]], ids[~ids["is_tf"]]
    n_other = spec.n_genes + spec.n_expression_only_genes
    if spec.n_tfs > len(tf_pool) or n_other > len(gene_pool):
        raise InputError(f"the demo has at most {len(tf_pool)} TFs and "
                         f"{len(gene_pool)} genes (velocity plus expression-only)")
    if spec.n_programs * spec.regulators_per_program > spec.n_tfs - spec.n_silent_tfs:
        raise InputError("the demo needs more expressed TFs than programs x regulators")
    rng = np.random.default_rng(spec.seed)
    tfs = tf_pool.iloc[:spec.n_tfs].reset_index(drop=True)
    genes = gene_pool.iloc[:n_other].reset_index(drop=True)
    velocity_genes = genes.iloc[:spec.n_genes]

    # The network is shared by all tissues; cells differ.
    expressed = np.arange(spec.n_silent_tfs, spec.n_tfs)
    regulators = rng.choice(expressed, (spec.n_programs, spec.regulators_per_program),
                            replace=False)
    loadings = rng.normal(size=(spec.n_programs, spec.regulators_per_program, spec.program_rank))
    program = rng.integers(spec.n_programs, size=spec.n_genes)
    mixing = rng.normal(size=(spec.n_genes, spec.program_rank))
    ceiling = rng.uniform(*spec.r2_ceiling_range, size=spec.n_genes)
    noise_sd = np.sqrt((1 - ceiling) / ceiling)  # signal has unit variance
    velocity_scale = rng.uniform(0.1, 2.0, size=spec.n_genes)

    staging = sibling(out, "staging")
    staging.mkdir()
    try:
        truth_genes, truth_regulators, lasso_rows = [], [], []
        for name, n_cells in spec.cells.items():
            tissue = normalize_tissue(name)
            expression = _tf_expression(rng, n_cells, spec)
            standardized = (expression - expression.mean(0)) / np.where(
                expression.std(0) > 0, expression.std(0), 1)
            latent = np.maximum(np.einsum("cpr,prk->cpk", standardized[:, regulators], loadings), 0)
            signal = np.einsum("cgk,gk->cg", latent[:, program], mixing)
            signal = (signal - signal.mean(0)) / signal.std(0)
            noise = rng.normal(size=signal.shape) * noise_sd
            velocity = (signal + noise) * velocity_scale
            missing = rng.uniform(*spec.missing_fraction_range, size=spec.n_genes)
            velocity[rng.uniform(size=velocity.shape) < missing] = np.nan
            other = rng.gamma(1.5, 1.0, size=(n_cells, n_other)) * (rng.uniform(size=(n_cells, n_other)) > 0.4)
            _write_tissue_hdf5(staging, tissue, rng, tfs, genes, velocity_genes,
                               expression, other, velocity)
            _write_activity(staging, tissue, rng, tfs, velocity_genes, regulators, program, spec)
            observed = ~np.isnan(velocity)
            for g, gene in velocity_genes.reset_index(drop=True).iterrows():
                cells = observed[:, g]
                r2 = 1 - np.sum(noise[cells, g] ** 2 * velocity_scale[g] ** 2) / np.sum(
                    (velocity[cells, g] - velocity[cells, g].mean()) ** 2)
                truth_genes.append((tissue, gene.ensembl_id, gene.symbol, int(program[g]),
                                    float(noise_sd[g] * velocity_scale[g]), int(cells.sum()), float(r2)))
            lasso_rows += _lasso_rows(rng, name, expression, velocity, tfs, velocity_genes, gene_pool)
        for p in range(spec.n_programs):
            for r, t in enumerate(regulators[p]):
                for g in np.flatnonzero(program == p):
                    truth_regulators.append((velocity_genes.ensembl_id.iat[g], velocity_genes.symbol.iat[g],
                                             tfs.ensembl_id.iat[t], tfs.symbol.iat[t], p,
                                             float(np.linalg.norm(loadings[p, r]))))
        _write_references(staging, rng, tfs, genes, gene_pool)
        lasso = pd.DataFrame(lasso_rows, columns=["tissue", "r2", "gene_ensembl", "gene_hgnc",
                                                  "tf_ensembl", "tf_hgnc"])
        (staging / LASSO).parent.mkdir(parents=True)
        lasso.to_csv(staging / LASSO)
        truth = staging / "truth"
        truth.mkdir()
        pd.DataFrame(truth_genes, columns=["tissue", "gene", "gene_symbol", "program", "noise_sd",
                                           "n_cells", "r2_ceiling"]).to_csv(truth / "genes.csv", index=False)
        pd.DataFrame(truth_regulators, columns=["gene", "gene_symbol", "tf", "tf_symbol", "program",
                                                "weight"]).to_csv(truth / "regulators.csv", index=False)
        (truth / "params.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
        install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _tf_expression(rng: np.random.Generator, n_cells: int, spec: DemoSpec) -> np.ndarray:
    """log10(RPKM + 1) of every TF: zero-inflated functions of latent cell states."""
    states = rng.normal(size=(n_cells, spec.n_latent_states))
    weights = rng.normal(scale=0.5, size=(spec.n_latent_states, spec.n_tfs))
    level = rng.uniform(0.5, 2.0, size=spec.n_tfs)
    log_rpkm = np.maximum(level + states @ weights + rng.normal(scale=0.2, size=(n_cells, spec.n_tfs)), 0)
    log_rpkm *= rng.uniform(size=log_rpkm.shape) > 0.3  # dropout
    log_rpkm[:, :spec.n_silent_tfs] = 0
    return log_rpkm


def _write_tissue_hdf5(root, tissue, rng, tfs, genes, velocity_genes, expression, other, velocity):
    n_cells = expression.shape[0]
    barcodes = np.array([f"{tissue}-{i:06d}-1" for i in range(n_cells)], dtype="S")
    columns = np.concatenate([tfs.ensembl_id, genes.ensembl_id])
    rpkm = np.concatenate([10 ** expression - 1, other], axis=1).astype(np.float32)
    shuffled = rng.permutation(len(columns))  # files list genes in no particular order
    for path, key, matrix, ids in ((RPKM, "exp", rpkm[:, shuffled], columns[shuffled]),
                                   (VELO, "velo", velocity.astype(np.float32), velocity_genes.ensembl_id)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / path, "a") as handle:
            group = handle.create_group(tissue)
            group.create_dataset(key, data=matrix, compression="gzip", compression_opts=1)
            group.create_dataset("barcode", data=barcodes)
            group.create_dataset("ensembl", data=np.array(ids, dtype="S"))


def _write_activity(root, tissue, rng, tfs, velocity_genes, regulators, program, spec):
    """Scores (rows TF symbols, columns gene symbols), enriched at true pairs."""
    n_tfs, n_genes = len(tfs), len(velocity_genes)
    true_pair = np.zeros((n_tfs, n_genes), bool)
    for p in range(spec.n_programs):
        true_pair[np.ix_(regulators[p], program == p)] = True
    counts = np.where(true_pair, rng.poisson(6, true_pair.shape) + 2, rng.poisson(0.4, true_pair.shape))
    mean = np.where(counts > 0, np.where(true_pair, rng.uniform(0.5, 1.0, counts.shape),
                                         rng.uniform(0.0, 0.4, counts.shape)), 0.0)
    empty = rng.uniform(size=counts.shape) < 0.1
    scored_tfs = np.sort(rng.choice(n_tfs, int(0.75 * n_tfs), replace=False))
    unscored_regulator = regulators[-1, -1]  # a true TF without scores
    scored_tfs = np.setdiff1d(np.union1d(scored_tfs, regulators.ravel()), [unscored_regulator])
    scored_genes = np.sort(rng.choice(n_genes, int(0.85 * n_genes), replace=False))
    tf_names = list(tfs.symbol.iloc[scored_tfs]) + ["NOTAREALTF1"]  # not in the id mapping
    gene_names = list(velocity_genes.symbol.iloc[scored_genes]) + ["NOTAREALGENE1"]
    for kind, values in (("mean", mean), ("sum", counts.astype(float))):
        table = np.vstack([values[np.ix_(scored_tfs, scored_genes)], np.ones(len(scored_genes))])
        table = np.hstack([table, np.ones((len(tf_names), 1))])
        frame = pd.DataFrame(table, index=tf_names, columns=gene_names)
        frame = frame.mask(np.pad(empty[np.ix_(scored_tfs, scored_genes)], ((0, 1), (0, 1))))
        folder = root / (MEAN_TF if kind == "mean" else SUM_TF)
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / f"{tissue}_{kind}.csv")


def _lasso_rows(rng, name, expression, velocity, tfs, velocity_genes, gene_pool):
    """The lasso list's rows for one tissue: most velocity genes, in no order, plus
    genes the data lacks. Only the format is the lasso's: r2 is the R² of a
    least-squares line on the gene's best single TF, and that TF is named."""
    rows = []
    listed = rng.permutation(len(velocity_genes))[: int(0.9 * len(velocity_genes))]
    for g in listed:
        cells = ~np.isnan(velocity[:, g])
        x = expression[cells] - expression[cells].mean(0)
        y = velocity[cells, g] - velocity[cells, g].mean()
        norms = np.sqrt((x ** 2).sum(0) * (y ** 2).sum())
        r2 = np.divide((x.T @ y) ** 2, norms ** 2, out=np.zeros(len(norms)), where=norms > 0)
        top = int(np.argmax(r2))
        rows.append((name, round(float(r2[top]), 4), velocity_genes.ensembl_id.iat[g],
                     velocity_genes.symbol.iat[g], tfs.ensembl_id.iat[top], tfs.symbol.iat[top]))
    for _, absent in gene_pool.iloc[-3:].iterrows():
        rows.append((name, 0.0, absent.ensembl_id, absent.symbol, "", ""))
    return rows


def _write_references(root, rng, tfs, genes, gene_pool):
    tf_list = pd.DataFrame({"Ensembl ID": tfs.ensembl_id, "HGNC symbol": tfs.symbol, "Is TF?": "Yes"})
    (root / TF_LIST).parent.mkdir(parents=True)
    tf_list.to_csv(root / TF_LIST)
    id_map = pd.concat([tfs, genes, gene_pool.iloc[-10:]])[["ensembl_id", "symbol"]]
    id_map = id_map.rename(columns={"symbol": "gene_symbol"}).iloc[rng.permutation(len(id_map))]
    # A second symbol for one id: the notebook keeps the first row per id.
    id_map = pd.concat([id_map, id_map.iloc[:1].assign(gene_symbol="ALIAS1")], ignore_index=True)
    (root / ID_MAP).parent.mkdir(parents=True)
    id_map.to_csv(root / ID_MAP)
