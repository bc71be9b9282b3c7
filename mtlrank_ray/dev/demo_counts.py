"""The demo as users' data is: counts sampled from the kinetic model, and the layers
scVelo estimates from them.

Per cell a size factor (log-normal, sd 0.3); each gene's spliced and unspliced
counts are Poisson draws around `CAPTURE` times the model's s and u (a TF's
around its level, and a tenth of it unspliced; an expression-only gene around
its recorded value), then a share `DROPOUT` of the counts is lost (0). The
file is what a scVelo user saves: `scv.pp.filter_and_normalize` (TFs kept),
scanpy's `log1p` (X: log(x + 1) of normalized counts), scanpy's PCA and neighbours (30 each), `scv.pp.moments`, `scv.tl.velocity` (the steady-state model; the stochastic
one fails on NumPy 2.4 in scVelo 0.3.4), so its `velocity`, `Ms` and `Mu`
layers carry the noise of estimating from counts, as real data's do. Beside
them, `true_velocity`, `true_unspliced` and `true_spliced` hold the model's
noise-free values (NaN for genes outside the model): a ceiling, not an input.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..native_output import native_stderr_filtered

log = logging.getLogger(__name__)

CAPTURE = 0.5  # counts per unit of the model's abundance, at size factor 1
UNSPLICED_SHARE_TF = 0.1  # a TF's unspliced abundance, as a share of its level
DROPOUT = 0.1


def scvelo_available() -> bool:
    try:
        import scvelo  # noqa: F401
    except ImportError:
        return False
    return True


def sample_counts(rng: np.random.Generator, spliced: np.ndarray, unspliced: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(spliced, unspliced) counts, cells x genes, around the abundances given."""
    size = rng.lognormal(0.0, 0.3, size=(len(spliced), 1))
    counts = []
    for abundance in (spliced, unspliced):
        drawn = rng.poisson(size * CAPTURE * np.maximum(abundance, 0))
        drawn[rng.uniform(size=drawn.shape) < DROPOUT] = 0
        counts.append(drawn.astype(np.int32))  # integers: scVelo normalizes only counts
    return counts[0], counts[1]


def write_scvelo_file(path: Path, barcodes: np.ndarray, gene_ids: np.ndarray, spliced: np.ndarray,
                      unspliced: np.ndarray, tf_ids: list[str], truth: dict[str, np.ndarray]) -> None:
    """Run scVelo's pipeline on the counts and save the result at `path` (see above).
    `truth`: layer name -> cells x genes (NaN outside the model), added after scVelo."""
    # scanpy's neighbours import umap, which loads TensorFlow; the never-expressed TFs have no
    # counts, and scVelo's fit of them divides 0 by 0 (their velocity is NaN, as it says);
    # importing scanpy turns DeprecationWarnings on for the whole process: its filters are undone.
    with warnings.catch_warnings(), native_stderr_filtered(), np.errstate(divide="ignore", invalid="ignore"):
        _estimate_and_write(path, barcodes, gene_ids, spliced, unspliced, tf_ids, truth)


def _estimate_and_write(path, barcodes, gene_ids, spliced, unspliced, tf_ids, truth) -> None:
    import anndata
    import scanpy
    import scipy.sparse
    import scvelo as scv

    adata = anndata.AnnData(X=scipy.sparse.csr_matrix(spliced),
                            obs=pd.DataFrame(index=pd.Index(barcodes.astype(str))),
                            var=pd.DataFrame(index=pd.Index(gene_ids.astype(str))),
                            layers={"spliced": scipy.sparse.csr_matrix(spliced),
                                    "unspliced": scipy.sparse.csr_matrix(unspliced)})
    scv.settings.verbosity = 0
    scv.pp.filter_and_normalize(adata, min_shared_counts=20, retain_genes=tf_ids)
    scanpy.pp.log1p(adata)  # X only (scVelo 0.3.4 has no log step); data.expression_is_log: true
    n_pcs = min(30, adata.n_vars - 1, adata.n_obs - 1)  # a small demo has fewer genes
    scanpy.pp.pca(adata, n_comps=n_pcs, random_state=0)  # scVelo 0.3.4 asks for scanpy's, not its own
    # Exact neighbours (scikit-learn): scanpy 1.11's default from 8,192 cells on
    # (pynndescent) fails on SciPy 1.17's sparse arrays (no getnnz).
    scanpy.pp.neighbors(adata, n_neighbors=30, n_pcs=n_pcs, random_state=0, transformer="sklearn")
    scv.pp.moments(adata, n_pcs=n_pcs, n_neighbors=30)
    scv.tl.velocity(adata, mode="deterministic")
    kept = pd.Index(gene_ids.astype(str)).get_indexer(adata.var_names)
    for name, values in truth.items():
        adata.layers[name] = values[:, kept].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path, compression="gzip")
