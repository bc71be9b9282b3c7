"""A synthetic atlas in the seed layout, with the truth it was drawn from.

The regulation is kinetic, so that velocity responds to TFs as transcription
does (saturating, cooperative), not linearly:

- cells lie along trajectories: per tissue, `n_lineages` lineages leave one
  root, each cell at a random time on one of them;
- along each lineage every expressed TF's level rises and falls smoothly (a
  log-level that is a sum of two sigmoid switches at random times), and each
  cell's TFs fluctuate about that (a log-normal Ornstein-Uhlenbeck process,
  slower than unspliced and faster than spliced RNA's turnover), so TFs vary
  independently from cell to cell; some TFs are never expressed;
- genes fall into regulatory programs; each program has a few true TFs with
  fixed roles: the first two a cooperative activating pair (an AND of two
  Hill functions), the next a repressor, further ones alternately activators
  and repressors. A gene's transcription rate is
  α = basal + vmax · Σ_role weight · Hill term, with its own basal rate, vmax
  and weights (so genes of a program share structure and multi-task sharing
  has something to find), Hill functions x^n / (K^n + x^n) (activation) and
  K^n / (K^n + x^n) (repression), K the TF's typical level, n
  `hill_coefficient`;
- unspliced and spliced abundances follow the splicing model
  u' = α − βu, s' = βu − γs (per-gene rates; β faster than γ), solved exactly
  along each cell's path from the steady state of the root;
- recorded expression is s for target genes and the TF level for TFs, with
  multiplicative noise and expression-dependent dropout, as RPKM
  (log10(RPKM + 1) is what the tool reads);
- velocity is βu − γs plus Gaussian measurement noise whose level sets a
  known R² ceiling, with a gene-specific share of cells missing (NaN), some
  genes below the cell thresholds. Velocity depends on the TFs' history, not
  only their present levels: even the noise-free velocity is not a function
  of the recorded expression, so the ceiling is an upper bound;
- activity scores are enriched at true (TF, gene) pairs, with empty cells,
  TFs and genes without scores and symbols the id mapping lacks;
- the lasso list names tissues the notebook's way ("Kidney (Left)") and
  lists genes the data lacks.

Written: DIR/data/... and DIR/results/r2/lasso_r2.csv exactly as the seed
reads them (see README, "Data layout"); where scVelo is installed, also
DIR/data/h5ad/<Tissue>/<Tissue>.h5ad, the same cells as counts with the layers
scVelo estimates from them (`demo_counts`; read with data.format: h5ad); and
DIR/truth/: regulators.csv
(gene, tf, program, effect, partner, weight; one network for every tissue),
genes.csv (tissue, gene, program, beta, gamma, noise_sd, n_cells, r2_ceiling:
the R² of the noise-free velocity on the cells with velocity) and params.json.
The same seed gives the same files' contents.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..data.references import ID_MAP, LASSO, TF_LIST, normalize_tissue
from ..data.scvelo import H5AD_DIR
from ..data.seed_layout import MEAN_TF, RPKM, SUM_TF, VELO
from ..data.store import install, sibling
from ..errors import InputError
from .demo_counts import UNSPLICED_SHARE_TF, sample_counts, scvelo_available, write_scvelo_file

log = logging.getLogger(__name__)
COUNTS_STREAM = 2  # the counts' random stream per tissue: the seed layout's draws stay as they were


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
    n_lineages: int = 6  # trajectories per tissue, from one root
    hill_coefficient: float = 2.0  # cooperativity of each TF's binding
    cell_variation: float = 0.5  # sd of a cell's log-deviation from its lineage's TF levels
    fluctuation_time: float = 1.5  # how long a deviation lasts: longer than 1/β, shorter than 1/γ
    r2_ceiling_range: tuple[float, float] = (0.3, 0.9)
    missing_fraction_range: tuple[float, float] = (0.0, 0.55)


DEMO_ENTRIES = ("data", "results", "truth")  # a demo atlas's folders, all it holds


def write_demo(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo atlas to `out` (an earlier demo there replaced whole, atomically);
    returns `out`."""
    out = Path(out)
    if out.exists():
        if not (out / "truth" / "params.json").is_file():
            raise InputError(f"{out} exists and is not a demo atlas; choose a new folder (an "
                             "earlier demo there would be replaced).")
        # A run started inside the demo (`cd demo && python ../tune.py`) writes runs/ there.
        if foreign := sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES):
            raise InputError(f"{out} holds {', '.join(foreign)} beside the demo atlas, which "
                             "writing the demo again would delete; move it elsewhere or choose "
                             "a new folder.")
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

    # The network and the genes' kinetics are shared by all tissues; cells differ.
    expressed = np.arange(spec.n_silent_tfs, spec.n_tfs)
    regulators = rng.choice(expressed, (spec.n_programs, spec.regulators_per_program),
                            replace=False)
    program = rng.integers(spec.n_programs, size=spec.n_genes)
    kinetics = _gene_kinetics(rng, spec, program)
    typical_level = np.exp(rng.uniform(np.log(2.0), np.log(30.0), size=spec.n_tfs))  # also Hill's K
    ceiling = rng.uniform(*spec.r2_ceiling_range, size=spec.n_genes)

    with_scvelo = scvelo_available()
    if not with_scvelo:
        log.warning("scVelo is not installed: the demo has no .h5ad of counts and estimated "
                    "layers (pip install -e \".[test]\" brings it)")
    staging = sibling(out, "staging")
    staging.mkdir()
    try:
        truth_genes, truth_regulators, lasso_rows = [], [], []
        for index, (name, n_cells) in enumerate(spec.cells.items()):
            tissue = normalize_tissue(name)
            tf_level, unspliced, spliced, true_velocity = _trajectories(
                rng, n_cells, spec, typical_level, regulators, program, kinetics)
            expression = _recorded(rng, tf_level, typical_level[None, :])
            expression[:, :spec.n_silent_tfs] = 0
            noise_sd = true_velocity.std(0) * np.sqrt((1 - ceiling) / ceiling)
            noise = rng.normal(size=true_velocity.shape) * noise_sd
            velocity = true_velocity + noise
            missing = rng.uniform(*spec.missing_fraction_range, size=spec.n_genes)
            velocity[rng.uniform(size=velocity.shape) < missing] = np.nan
            other = np.concatenate([_recorded(rng, spliced, spliced.mean(0, keepdims=True)),
                                    rng.gamma(1.5, 1.0, size=(n_cells, spec.n_expression_only_genes))
                                    * (rng.uniform(size=(n_cells, spec.n_expression_only_genes)) > 0.4)],
                                   axis=1)
            _write_tissue_hdf5(staging, tissue, rng, tfs, genes, velocity_genes,
                               expression, other, velocity)
            if with_scvelo:
                _write_counts_file(staging, tissue, np.random.default_rng([spec.seed, COUNTS_STREAM, index]),
                                   spec, tfs, genes, tf_level, unspliced, spliced, true_velocity,
                                   other[:, spec.n_genes:])
            _write_activity(staging, tissue, rng, tfs, velocity_genes, regulators, program, spec)
            observed = ~np.isnan(velocity)
            for g, gene in velocity_genes.reset_index(drop=True).iterrows():
                cells = observed[:, g]
                r2 = 1 - np.sum(noise[cells, g] ** 2) / np.sum(
                    (velocity[cells, g] - velocity[cells, g].mean()) ** 2)
                truth_genes.append((tissue, gene.ensembl_id, gene.symbol, int(program[g]),
                                    float(kinetics["beta"][g]), float(kinetics["gamma"][g]),
                                    float(noise_sd[g]), int(cells.sum()), float(r2)))
            lasso_rows += _lasso_rows(rng, name, np.log10(expression + 1), velocity, tfs,
                                      velocity_genes, gene_pool)
        for p in range(spec.n_programs):
            for r, t in enumerate(regulators[p]):
                effect, partner = _role(r, spec.regulators_per_program)
                for g in np.flatnonzero(program == p):
                    truth_regulators.append((
                        velocity_genes.ensembl_id.iat[g], velocity_genes.symbol.iat[g],
                        tfs.ensembl_id.iat[t], tfs.symbol.iat[t], p, effect,
                        "" if partner is None else tfs.ensembl_id.iat[regulators[p, partner]],
                        float(kinetics["weights"][g, r if partner is None else min(r, partner)])))
        _write_references(staging, rng, tfs, genes, gene_pool)
        lasso = pd.DataFrame(lasso_rows, columns=["tissue", "r2", "gene_ensembl", "gene_hgnc",
                                                  "tf_ensembl", "tf_hgnc"])
        (staging / LASSO).parent.mkdir(parents=True)
        lasso.to_csv(staging / LASSO)
        truth = staging / "truth"
        truth.mkdir()
        pd.DataFrame(truth_genes, columns=["tissue", "gene", "gene_symbol", "program", "beta", "gamma",
                                           "noise_sd", "n_cells", "r2_ceiling"]).to_csv(
            truth / "genes.csv", index=False)
        pd.DataFrame(truth_regulators, columns=["gene", "gene_symbol", "tf", "tf_symbol", "program",
                                                "effect", "partner", "weight"]).to_csv(
            truth / "regulators.csv", index=False)
        (truth / "params.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
        install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


TIME, STEP = 10.0, 0.05  # each lineage's span and the solver's step, in the rates' time unit


def _role(r: int, n: int) -> tuple[str, int | None]:
    """Of a program's n regulators, the r-th's effect and its cooperative partner, if any."""
    if r < 2 and n >= 2:
        return "activation", 1 - r
    if n == 1:
        return "activation", None
    return ("repression" if r % 2 == 0 else "activation"), None


def _gene_kinetics(rng: np.random.Generator, spec: DemoSpec, program: np.ndarray) -> dict:
    """Per gene: basal rate, vmax, one weight per regulator role, splicing and degradation."""
    n = spec.n_genes
    return {"basal": rng.uniform(0.05, 0.3, n), "vmax": rng.uniform(1.0, 5.0, n),
            "weights": rng.uniform(0.3, 1.0, (n, spec.regulators_per_program)),
            "beta": rng.uniform(2.0, 5.0, n), "gamma": rng.uniform(0.1, 0.4, n)}


def transcription_rate(level: np.ndarray, typical_level: np.ndarray, regulators: np.ndarray,
                   program: np.ndarray, kinetics: dict, n: float) -> np.ndarray:
    """α per (…, gene) from TF levels (…, TFs): basal + vmax · Σ weight · Hill term."""
    ratio = (level / typical_level) ** n
    activation, repression = ratio / (1 + ratio), 1 / (1 + ratio)
    terms = np.zeros(level.shape[:-1] + (len(program),))
    for r in range(regulators.shape[1]):
        effect, partner = _role(r, regulators.shape[1])
        if partner is not None and partner < r:
            continue  # the pair's one AND term is counted at its first member
        tfs = regulators[program, r]
        term = activation[..., tfs] if effect == "activation" else repression[..., tfs]
        if partner is not None:
            term = term * activation[..., regulators[program, partner]]
        terms += kinetics["weights"][:, r] * term
    return kinetics["basal"] + kinetics["vmax"] * terms


def _trajectories(rng, n_cells, spec, typical_level, regulators, program, kinetics):
    """Cells at random times on random lineages: (TF levels, unspliced, spliced, noise-free
    velocity).

    A cell's TF levels are its lineage's curves times its own fluctuation, a
    log-normal Ornstein-Uhlenbeck process (sd `cell_variation`, correlation time
    `fluctuation_time`, between the lifetimes 1/β and 1/γ): spliced RNA averages
    past transcription, so velocity βu − γs reflects how the cell's present
    regulator levels depart from their recent past. u and s are solved along
    the cell's own path up to its time."""
    steps = int(round(TIME / STEP)) + 1
    times = np.arange(steps) * STEP
    shape = (spec.n_lineages, 1, spec.n_tfs)
    switches = [(rng.normal(scale=1.2, size=shape), rng.uniform(0, TIME, shape),
                 rng.uniform(0.3, 1.5, shape)) for _ in range(2)]
    log_change = sum(size / (1 + np.exp(-(times[None, :, None] - at) / width))
                     for size, at, width in switches)
    log_change -= log_change[:, :1]  # every lineage starts at the root
    lineage = rng.integers(spec.n_lineages, size=n_cells)
    end = rng.integers(steps, size=n_cells)
    keep = np.exp(-STEP / spec.fluctuation_time)
    fluctuation = rng.normal(scale=spec.cell_variation, size=(n_cells, spec.n_tfs))  # stationary

    def level(k):
        return typical_level * np.exp(log_change[lineage, k] + fluctuation)

    def transcription(k):
        return transcription_rate(level(k), typical_level, regulators, program, kinetics,
                              spec.hill_coefficient)

    beta, gamma = kinetics["beta"], kinetics["gamma"]
    alpha = transcription(0)
    u, s = alpha / beta, alpha / gamma
    for k in range(1, steps):  # α held over each step, at its value at the step's start
        moving = (end >= k)[:, None]
        next_u, next_s = splice(u, s, alpha, beta, gamma, STEP)
        u, s = np.where(moving, next_u, u), np.where(moving, next_s, s)
        step = keep * fluctuation + np.sqrt(1 - keep ** 2) * spec.cell_variation * rng.normal(
            size=fluctuation.shape)
        fluctuation = np.where(moving, step, fluctuation)  # a cell's path stops at its time
        alpha = transcription(k)
    return level(end), u, s, beta * u - gamma * s


def splice(u, s, alpha, beta, gamma, dt):
    """u and s after dt of u' = α − βu, s' = βu − γs with α constant: the exact
    solution (scVelo's), for β ≠ γ."""
    decay_u, decay_s = np.exp(-beta * dt), np.exp(-gamma * dt)
    next_u = alpha / beta + (u - alpha / beta) * decay_u
    next_s = (alpha / gamma + (s - alpha / gamma) * decay_s
              + (alpha - beta * u) / (gamma - beta) * (decay_s - decay_u))
    return next_u, next_s


def _recorded(rng: np.random.Generator, level: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """RPKM as sequenced: multiplicative noise, and dropout likelier at low levels."""
    noisy = level * rng.lognormal(0.0, 0.2, level.shape)
    dropped = rng.uniform(size=level.shape) < 0.4 * np.exp(-level / typical)
    return np.where(dropped, 0.0, noisy)


def _write_tissue_hdf5(root, tissue, rng, tfs, genes, velocity_genes, expression, other, velocity):
    n_cells = expression.shape[0]
    barcodes = np.array([f"{tissue}-{i:06d}-1" for i in range(n_cells)], dtype="S")
    columns = np.concatenate([tfs.ensembl_id, genes.ensembl_id])
    rpkm = np.concatenate([expression, other], axis=1).astype(np.float32)
    shuffled = rng.permutation(len(columns))  # files list genes in no particular order
    for path, key, matrix, ids in ((RPKM, "exp", rpkm[:, shuffled], columns[shuffled]),
                                   (VELO, "velo", velocity.astype(np.float32), velocity_genes.ensembl_id)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / path, "a") as handle:
            group = handle.create_group(tissue)
            group.create_dataset(key, data=matrix, compression="gzip", compression_opts=1)
            group.create_dataset("barcode", data=barcodes)
            group.create_dataset("ensembl", data=np.array(ids, dtype="S"))


def _write_counts_file(root, tissue, rng, spec, tfs, genes, tf_level, unspliced, spliced,
                       true_velocity, expression_only):
    """The tissue's cells as counts, through scVelo (`demo_counts`): TFs, then the velocity
    genes, then the expression-only genes, as in the seed layout's expression file."""
    tf_level = np.where(np.arange(spec.n_tfs) < spec.n_silent_tfs, 0.0, tf_level)  # silent TFs
    counts = sample_counts(rng, np.concatenate([tf_level, spliced, expression_only], axis=1),
                           np.concatenate([UNSPLICED_SHARE_TF * tf_level, unspliced,
                                           UNSPLICED_SHARE_TF * expression_only], axis=1))
    outside = np.full((len(tf_level), spec.n_tfs), np.nan)
    only = np.full(expression_only.shape, np.nan)
    truth = {name: np.concatenate([outside, values, only], axis=1) for name, values in
             (("true_velocity", true_velocity), ("true_unspliced", unspliced), ("true_spliced", spliced))}
    barcodes = np.array([f"{tissue}-{i:06d}-1" for i in range(len(tf_level))])
    write_scvelo_file(root / H5AD_DIR / tissue / f"{tissue}.h5ad", barcodes,
                      np.concatenate([tfs.ensembl_id, genes.ensembl_id]), *counts,
                      list(tfs.ensembl_id), truth)


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
