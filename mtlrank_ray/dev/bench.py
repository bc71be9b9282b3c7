"""Trainer benchmark: `python -m mtlrank_ray.dev.bench`.

Every figure is measured in this run, on synthetic data of the stated sizes:

    speedup_vs_seed      one training step of the seed's per-gene Keras models
                         (T=100 TFs, G=25 genes, batch 256) over one of ours
    step_over_matmul     our full step (forward, backward, nuclear norms, Adam)
                         at T=1600, G=25, batch 256, over the one matmul no
                         implementation avoids: (G, 256, T) x (G, T, 64);
                         step_over_matmul_previous: the same with the first
                         layer's backward as it was before the M / N products;
                         gather_over_matmul: gathering one batch's rows (G, 256, T)
                         from the cells x TFs matrix, over the matmul;
                         floor_over_matmul: the three products of that size a
                         step needs (forward, M and N) plus that gather, what any
                         step here spends before its elementwise work, nuclear
                         norms and Adam
    first_step_s         time of the first step at T=1600 (tracing included)
    ranking_s_per_gene_replicate  TF rankings (DeepLIFT over every cell of each
                         gene) for one cluster of 25 genes on 20,000 cells x
                         1,600 TFs, per gene; ranking_s_500_genes: that x 500
                         (clusters are independent), against the paper's ~300 s
                         of deep SHAP per gene and replicate
    lasso_s_per_gene_replicate  the lasso baseline (alpha grid of the defaults,
                         chosen on validation) on the same cluster, per gene;
                         lasso_s_500_genes: that x 500
    grnboost2_s_per_gene  GRNBoost2 (arboreto's settings, early stopping on
                         validation) for one gene on 20,000 cells x 1,600 TFs,
                         one thread, velocity a nonlinear function of 3 TFs;
                         grnboost2_trees: the trees it kept
    peak_rss_over_input  one epoch on 50,000 cells x 1,600 TFs, 25 genes: peak
                         resident memory minus the resident memory after
                         imports, over the float32 expression matrix (320 MB);
                         measured in fresh processes, the median of three

The seed's step gives each model its own Adam: under Keras 3 the notebook's
single shared Adam raises "Unknown variable".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import tensorflow as tf

from ..config import TrainingConfig
from ..core import model
from ..core import trainer as trainer_module
from ..core.cluster_data import ClusterData, split_cells
from ..core.trainer import ClusterTrainer, Trial
from ..data.store import aligned_empty

BATCH = 256


def synthetic_cluster(n_cells: int, n_tfs: int, n_genes: int, seed: int = 0) -> ClusterData:
    rng = np.random.default_rng(seed)
    expression = rng.random(dtype=np.float32, out=aligned_empty((n_cells, n_tfs)))
    velocity = rng.standard_normal((n_cells, n_genes), dtype=np.float32)
    velocity[rng.random((n_cells, n_genes)) < 0.1] = np.nan
    act_mean = rng.random((n_genes, n_tfs), dtype=np.float32)
    act_sum = rng.random((n_genes, n_tfs), dtype=np.float32)
    return ClusterData([f"gene{g}" for g in range(n_genes)], expression, velocity, act_mean, act_sum)


def make_trainer(data: ClusterData) -> ClusterTrainer:
    split = split_cells(len(data.expression), 0.1, 0.1, seed=0, replicate=0)
    return ClusterTrainer(data, Trial("bench", 0, 0, 0.01), TrainingConfig(batch_size=BATCH), split, seed=0)


def median_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def our_step(n_tfs: int, n_genes: int, repeats: int) -> tuple[float, float]:
    """(median step time, first step time) of our training step."""
    trainer = make_trainer(synthetic_cluster(20 * BATCH, n_tfs, n_genes))
    rng = np.random.default_rng(1)
    cells = tf.constant(rng.integers(0, 20 * BATCH, (n_genes, BATCH)), tf.int32)
    targets = tf.constant(rng.standard_normal((n_genes, BATCH), dtype=np.float32))
    first = median_time(lambda: trainer.train_step(cells, targets).numpy(), 1)
    return median_time(lambda: trainer.train_step(cells, targets).numpy(), repeats), first


@tf.function(jit_compile=True)
def _previous_backward(expression, cells, a, c, upstream):
    rows = tf.gather(expression, cells)
    active = tf.where(rows * a[:, None, :] + c[:, None, :] > 0, upstream, 0.0)
    return tf.reduce_sum(active * rows, axis=1), tf.reduce_sum(active, axis=1)


def previous_first_layers(expression, cells, a, c, kernel):
    """The formulation `model.first_layers` replaced, for the comparison: the first
    layer with its own gradient, so the backward pass forms the (G, B, T) gradient
    dz Wᵀ and reduces it under the ReLU mask, then autodiff through the matmul."""
    @tf.custom_gradient
    def layer(a, c):
        def gradient(upstream):
            return _previous_backward(expression, cells, a, c, upstream)
        return model._first_layer(expression, cells, a, c), gradient
    return tf.matmul(layer(a, c), kernel)


def previous_step(n_tfs: int, n_genes: int, repeats: int) -> float:
    """Median step time with `previous_first_layers` in the model (traced afresh: the
    process keeps its traces of the current step, `trainer.compiled`)."""
    trainer_module.compiled.cache_clear()
    try:
        with mock.patch.object(model, "first_layers", previous_first_layers):
            return our_step(n_tfs, n_genes, repeats)[0]
    finally:
        trainer_module.compiled.cache_clear()


def matmul_time(n_tfs: int, n_genes: int, repeats: int) -> float:
    rng = np.random.default_rng(2)
    lhs = tf.constant(rng.random((n_genes, BATCH, n_tfs), dtype=np.float32))
    rhs = tf.constant(rng.random((n_genes, n_tfs, 64), dtype=np.float32))
    matmul = tf.function(tf.matmul)
    matmul(lhs, rhs).numpy()
    return median_time(lambda: matmul(lhs, rhs).numpy(), repeats)


def seed_step(n_tfs: int, n_genes: int) -> float:
    """One training step of the notebook's formulation (after one warm-up step)."""
    from .seed_model import build_model, seed_loss
    rng = np.random.default_rng(3)
    features = [[rng.random((BATCH, 5)) for _ in range(n_tfs)] for _ in range(n_genes)]
    targets = [rng.standard_normal(BATCH) for _ in range(n_genes)]
    models = [build_model(num_tf=n_tfs, num_feature_type=5) for _ in range(n_genes)]
    optimizers = [tf.keras.optimizers.Adam(learning_rate=0.01) for _ in models]

    def step():
        x = [[tf.convert_to_tensor(f, dtype=tf.float64) for f in gene] for gene in features]
        y = [tf.convert_to_tensor(t, dtype=tf.float64) for t in targets]
        with tf.GradientTape() as tape:
            loss = seed_loss(models, x, y, n_tfs, 0.01)
        grads = tape.gradient(loss, [m.trainable_weights for m in models],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for grad, keras_model, optimizer in zip(grads, models, optimizers):
            optimizer.apply_gradients(zip(grad, keras_model.trainable_weights))

    step()
    return median_time(step, 1)


def ranking_time(n_cells: int, n_tfs: int, n_genes: int) -> float:
    """Seconds per gene to rank TFs over all of each gene's cells."""
    from ..core.attribution import tf_scores
    data = synthetic_cluster(n_cells, n_tfs, n_genes)
    trainer = make_trainer(data)
    weights = {k: v.numpy() for k, v in trainer.weights.items()}
    cells = [np.flatnonzero(~np.isnan(data.target[:, g])) for g in range(n_genes)]
    args = (weights, data.expression, data.act_mean, data.act_sum,
            trainer.splits["train"].standardization, cells)
    tf_scores(*args)  # traced and compiled once per process
    return median_time(lambda: tf_scores(*args), 1) / n_genes


def baseline_time(method: str, n_cells: int, n_tfs: int, n_genes: int) -> tuple[float, object]:
    """Seconds per gene of one baseline over one cluster's splits, and the fit."""
    from ..analysis.baselines import fit_baseline
    from ..config import SearchConfig
    data = synthetic_cluster(n_cells, n_tfs, n_genes)
    # Velocity a noisy nonlinear function of 3 TFs (R² ceiling ~0.5): boosting keeps
    # as many trees as on data with signal, not the 25 that pure noise stops at.
    rng = np.random.default_rng(1)
    for g in range(n_genes):
        a, b, c = data.expression[:, rng.choice(n_tfs, 3, replace=False)].T
        signal = np.tanh(4 * (a - 0.5)) + 2 * b * (c > 0.5)
        data.target[:, g] = signal + rng.normal(scale=signal.std(), size=n_cells)
    split = split_cells(n_cells, 0.1, 0.1, seed=0, replicate=0)
    started = time.perf_counter()
    fit = fit_baseline(method, data, split, "train", SearchConfig(), replicate=0)
    return (time.perf_counter() - started) / n_genes, fit


def memory_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak) of this process. Not getrusage's
    ru_maxrss: after exec it keeps the peak of the parent that spawned us."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def memory_probe(n_cells: int, n_tfs: int, n_genes: int) -> None:
    tf.constant(0.0) + 1.0  # runtime initialized: counted as imports
    baseline = memory_bytes("VmRSS")
    trainer = make_trainer(synthetic_cluster(n_cells, n_tfs, n_genes))
    trainer.fit(1)
    peak = memory_bytes("VmHWM")
    print(f"{(peak - baseline) / (n_cells * n_tfs * 4):.2f}")


def gather_time(n_tfs: int, n_genes: int, repeats: int) -> float:
    rng = np.random.default_rng(3)
    expression = tf.constant(rng.random((20 * BATCH, n_tfs), dtype=np.float32))
    cells = tf.constant(rng.integers(0, 20 * BATCH, (n_genes, BATCH)), tf.int32)
    gather = tf.function(tf.gather)
    gather(expression, cells).numpy()
    return median_time(lambda: gather(expression, cells).numpy(), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtlrank_ray.dev.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--memory-probe", nargs=3, type=int, metavar=("CELLS", "TFS", "GENES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    genes, small_tfs, large_tfs, cells, repeats = (
        (4, 10, 64, 2000, 3) if args.quick else (25, 100, 1600, 50_000, 20))
    print(f"cores: {os.cpu_count()}")
    print(f"tensorflow: {tf.__version__}")
    print(f"devices: {', '.join(d.device_type for d in tf.config.list_logical_devices())}")
    ours_small, _ = our_step(small_tfs, genes, repeats)
    seed = seed_step(small_tfs, genes)
    print(f"seed_step_s: {seed:.3f}")
    print(f"our_step_s_t{small_tfs}: {ours_small:.5f}")
    print(f"speedup_vs_seed: {seed / ours_small:.0f}")
    ours_large, first = our_step(large_tfs, genes, repeats)
    matmul = matmul_time(large_tfs, genes, repeats)
    print(f"our_step_s_t{large_tfs}: {ours_large:.5f}")
    print(f"matmul_s: {matmul:.5f}")
    print(f"step_over_matmul: {ours_large / matmul:.2f}")
    previous = previous_step(large_tfs, genes, repeats)
    print(f"step_over_matmul_previous: {previous / matmul:.2f}")
    gather = gather_time(large_tfs, genes, repeats)
    print(f"gather_over_matmul: {gather / matmul:.2f}")
    print(f"floor_over_matmul: {3 + gather / matmul:.2f}")
    print(f"first_step_s: {first:.2f}")
    per_gene = ranking_time(cells * 2 // 5, large_tfs, genes)
    print(f"ranking_s_per_gene_replicate: {per_gene:.3f}")
    print(f"ranking_s_500_genes: {per_gene * 500:.0f}")
    lasso, _ = baseline_time("lasso", cells * 2 // 5, large_tfs, genes)
    print(f"lasso_s_per_gene_replicate: {lasso:.3f}")
    print(f"lasso_s_500_genes: {lasso * 500:.0f}")
    boosted, fit = baseline_time("grnboost2", cells * 2 // 5, large_tfs, 1)
    print(f"grnboost2_s_per_gene: {boosted:.2f}")
    print(f"grnboost2_trees: {int(fit.setting[0])}")
    # Peak memory varies a little between runs (allocator caching, compilation): median of 3.
    ratios = sorted(float(subprocess.run(
        [sys.executable, "-m", "mtlrank_ray.dev.bench", "--memory-probe", str(cells), str(large_tfs),
         str(genes)], capture_output=True, text=True, check=True).stdout.split()[-1])
        for _ in range(3))
    print(f"peak_rss_over_input_runs: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"peak_rss_over_input: {ratios[1]:.2f}")


if __name__ == "__main__":
    main()
