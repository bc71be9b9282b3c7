"""The batched model is the seed's model: same predictions, loss and gradients.

Per-gene Keras models are built exactly as the notebook builds them, our
weights are copied in, and both are evaluated on the same cells: a TF whose
expression never varies, genes with NaN velocity, activity of both signs and
zeros, and both standardization modes.
"""

import numpy as np
import pytest
import tensorflow as tf

from mtlrank_ray.config import TrainingConfig
from mtlrank_ray.core import model
from mtlrank_ray.core.cluster_data import ClusterData, split_cells
from mtlrank_ray.core.trainer import ClusterTrainer, Trial
from mtlrank_ray.dev.seed_model import build_model, seed_features, seed_loss

N_CELLS, N_TFS, N_GENES = 60, 5, 3
RTOL, ATOL = 1e-5, 1e-6


def small_cluster(rng):
    expression = np.log10(rng.gamma(1.0, 20.0, (N_CELLS, N_TFS)) + 1).astype(np.float32)
    expression[:, 1] = 0.0  # a TF that is never expressed: std 0 in every split
    expression[rng.uniform(size=expression.shape) < 0.3] = 0.0
    velocity = rng.normal(size=(N_CELLS, N_GENES)).astype(np.float32)
    velocity[rng.uniform(size=velocity.shape) < 0.2] = np.nan
    act_mean = rng.normal(size=(N_GENES, N_TFS)).astype(np.float32)
    act_sum = np.abs(rng.normal(size=(N_GENES, N_TFS))).astype(np.float32)
    act_mean[0, 2] = act_sum[1, 3] = act_mean[2, 0] = act_sum[2, 0] = 0.0
    return ClusterData([f"gene{g}" for g in range(N_GENES)], expression, velocity, act_mean, act_sum)


def seed_models(weights):
    """One Keras model per gene, built as the notebook does, holding our weights."""
    models = []
    for g in range(N_GENES):
        keras_model = build_model(num_tf=N_TFS, num_feature_type=5)
        per_tf = {id(layer.input): layer for layer in keras_model.layers
                  if isinstance(layer, tf.keras.layers.Dense) and layer.kernel.shape == (5, 1)}
        for t, inp in enumerate(keras_model.inputs):
            per_tf[id(inp)].set_weights([weights["first_kernel"][g, t][:, None],
                                         weights["first_bias"][g, t:t + 1]])
        dense = [layer for layer in keras_model.layers
                 if isinstance(layer, tf.keras.layers.Dense) and layer.kernel.shape != (5, 1)]
        for layer, name in zip(dense, model.DENSE):
            layer.set_weights([weights[f"{name}_kernel"][g], weights[f"{name}_bias"][g]])
        assert keras_model.trainable_weights[2 * N_TFS].shape == (N_TFS, 64)  # the notebook's index
        models.append(keras_model)
    return models


def seed_inputs(data, trainer, split, standardize, positions):
    """Per gene: the notebook's feature list and standardized target for `positions`."""
    xs, ys = [], []
    for g in range(N_GENES):
        cells = trainer.splits[split].cells[g]
        train_cells = trainer.splits["train"].cells[g]
        stats = data.expression[train_cells] if standardize == "train" else None
        features = seed_features(data.expression[cells], data.act_mean[g], data.act_sum[g], stats)
        xs.append([f[positions] for f in features])
        ys.append(trainer.splits[split].target[g][positions])
    return xs, ys


@pytest.mark.parametrize("standardize", ["per_split", "train"])
def test_predictions_loss_and_gradients_equal_the_seeds(standardize):
    rng = np.random.default_rng(3)
    data = small_cluster(rng)
    split = split_cells(N_CELLS, 0.2, 0.2, seed=1, replicate=0)
    trainer = ClusterTrainer(data, Trial("T", 0, 0, 0.1), TrainingConfig(standardize=standardize),
                             split, seed=0)
    weights = {k: v.numpy() for k, v in trainer.weights.items()}
    models = seed_models(weights)
    activity = (data.act_mean, data.act_sum)

    for split_name in ("train", "val", "test"):
        gene_split = trainer.splits[split_name]
        count = min(len(c) for c in gene_split.cells)
        positions = np.arange(count)
        xs, ys = seed_inputs(data, trainer, split_name, standardize, positions)
        expected = np.stack([models[g](xs[g])[:, 0].numpy() for g in range(N_GENES)])
        s = gene_split.standardization
        a, c = model.first_layer_coefficients(trainer.weights, *activity, s.shift, s.scale, s.constant)
        cells = np.stack([gene_split.cells[g][positions] for g in range(N_GENES)])
        ours = model.predict(trainer.weights, data.expression, cells, a, c).numpy()
        np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)

    # One training batch: loss and every gradient.
    positions = np.arange(8)
    xs, ys = seed_inputs(data, trainer, "train", standardize, positions)
    with tf.GradientTape() as tape:
        expected_loss = seed_loss(models, xs, ys, N_TFS, lam=0.1)
    expected_grads = tape.gradient(expected_loss, [m.trainable_weights for m in models])
    s = trainer.splits["train"].standardization
    cells = np.stack([trainer.splits["train"].cells[g][positions] for g in range(N_GENES)])
    names = list(trainer.weights)
    with tf.GradientTape() as tape:
        a, c = model.first_layer_coefficients(trainer.weights, *activity, s.shift, s.scale, s.constant)
        ours_loss, _ = model.loss(trainer.weights, data.expression, cells, a, c, np.stack(ys), 0.1, None)
    grads = dict(zip(names, tape.gradient(ours_loss, [trainer.weights[k] for k in names])))
    np.testing.assert_allclose(ours_loss.numpy(), expected_loss.numpy(), rtol=RTOL)
    for g in range(N_GENES):
        per_layer = {id(w): grad for w, grad in zip(models[g].trainable_weights, expected_grads[g])}
        keras_model = models[g]
        for t, inp in enumerate(keras_model.inputs):
            layer = next(layer for layer in keras_model.layers if getattr(layer, "input", None) is inp
                         and isinstance(layer, tf.keras.layers.Dense))
            np.testing.assert_allclose(grads["first_kernel"][g, t], per_layer[id(layer.kernel)][:, 0],
                                       rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(grads["first_bias"][g, t], per_layer[id(layer.bias)][0],
                                       rtol=RTOL, atol=ATOL)
        dense = [layer for layer in keras_model.layers
                 if isinstance(layer, tf.keras.layers.Dense) and layer.kernel.shape != (5, 1)]
        for layer, name in zip(dense, model.DENSE):
            np.testing.assert_allclose(grads[f"{name}_kernel"][g], per_layer[id(layer.kernel)],
                                       rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(grads[f"{name}_bias"][g], per_layer[id(layer.bias)],
                                       rtol=RTOL, atol=ATOL)
    # The never-expressed TF (column 1) takes the raw path and still gets gradient
    # through its constant features wherever activity is nonzero.
    assert np.all(trainer.splits["train"].standardization.constant[:, 1])


def test_nuclear_norm_gradient_equals_autodiff_through_svd():
    rng = np.random.default_rng(0)
    matrix = tf.constant(rng.normal(size=(4, 37)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(matrix)
        ours = model.nuclear_norm(matrix)
        sigma, _, _ = tf.linalg.svd(matrix, full_matrices=False, compute_uv=True)
        autodiff = tf.reduce_sum(sigma)
    np.testing.assert_allclose(ours.numpy(), autodiff.numpy(), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, matrix).numpy(),
                               tape.gradient(autodiff, matrix).numpy(), rtol=1e-4, atol=1e-6)
    assert len(set(np.round(sigma.numpy(), 3))) == 4  # distinct singular values


def test_nuclear_norm_of_a_rank_deficient_matrix():
    rng = np.random.default_rng(1)
    low_rank = (rng.normal(size=(5, 2)) @ rng.normal(size=(2, 40))).astype(np.float32)
    matrix = tf.constant(low_rank)
    with tf.GradientTape() as tape:
        tape.watch(matrix)
        norm = model.nuclear_norm(matrix)
    np.testing.assert_allclose(norm.numpy(), np.linalg.svd(low_rank, compute_uv=False).sum(), rtol=1e-5)
    u, s, vt = np.linalg.svd(low_rank, full_matrices=False)
    expected = u[:, :2] @ vt[:2]  # U Vᵀ over the nonzero singular values
    np.testing.assert_allclose(tape.gradient(norm, matrix).numpy(), expected, atol=1e-4)


def test_nuclear_norm_gradient_keeps_small_directions_at_atlas_size():
    """The Dense(64) unfolding at T = 1,600 (25 x 102,400), singular values from 1 down
    to 1e-4, then twice and half the floor √(102,400·eps64) ≈ 4.8e-6: every direction
    above the floor gets its unit subgradient, U Vᵀ of a float64 SVD, and the one below
    none. (A float32-grounded cutoff, σ_max · eps32 · 102,400 = 1.2% of σ_max, dropped
    the 13 smallest above the floor; they are the low-rank regime the penalty exists to
    reach.)"""
    rng = np.random.default_rng(2)
    genes, width = 25, 1600 * 64
    u, _ = np.linalg.qr(rng.normal(size=(genes, genes)))
    v, _ = np.linalg.qr(rng.normal(size=(width, genes)))
    floor = np.sqrt(width * np.finfo(np.float64).eps)
    sigma = np.concatenate([np.logspace(0, -4, genes - 2), [2 * floor, floor / 2]])
    matrix = ((u * sigma) @ v.T).astype(np.float32)
    tensor = tf.constant(matrix)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        norm = model.nuclear_norm(tensor)
    gradient = tape.gradient(norm, tensor).numpy()
    u64, s64, vt64 = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    assert (s64[:-1] < 0.012 * s64[0]).sum() == 13
    np.testing.assert_allclose(norm.numpy(), s64.sum(), rtol=1e-6)
    expected = u64[:, :-1] @ vt64[:-1]
    assert np.linalg.norm(gradient - expected) / np.linalg.norm(expected) < 1e-4
    # Each direction's share of the gradient is 1 down to twice the floor, 0 below it.
    shares = np.einsum("ij,jk,ik->i", u64.T, gradient.astype(np.float64), vt64)
    np.testing.assert_allclose(shares, [1.0] * (genes - 1) + [0.0], atol=1e-3)
