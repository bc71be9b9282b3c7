"""The maths: the seed's trace-norm multi-task network, as batched tensors.

One cluster of G genes over T TFs. The seed builds, per gene, one
`Dense(1, relu)` per TF over five features (e, m, s, e*m, e*s: expression,
mean activity, sum activity and their products), concatenates the T outputs
and stacks Dense 64, 32, 16 (ReLU) and 1 (linear). Here every gene's weights
live in one tensor per layer, with the gene as the leading axis:

    first     (G, T, 5) kernels in feature order e, m, s, e*m, e*s, and (G, T) biases
    dense_64  (G, T, 64), dense_32 (G, 64, 32), dense_16 (G, 32, 16), output (G, 16, 1)
              kernels, each with a (G, units) bias

The first layer is computed without building the five features. After
standardization with a split's statistics, the e*m column is sign(m)·ẽ where
std(e) > 0 and e*m itself where std(e) = 0 (likewise e*s), and m and s are
constant per (gene, TF). So the pre-activation for gene g, TF t and a cell
with raw expression e is exactly

    e · A[g, t] + C[g, t]

with A and C built from the five weights, the bias, the activity scores and
the standardization (`first_layer_coefficients`): one multiply-add per gene
and TF, the same function of the same weights as the seed's, hence the same
gradients.

Loss (the seed's): mean over genes of the MSE, plus λ times the mean of the
nuclear norms of the Dense(64) and Dense(32) kernels stacked over genes and
unfolded along the gene axis (G x T·64 and G x 64·32), plus an optional L1
term the seed declares but never adds (weight 0 by default).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..data.store import is_aligned

HIDDEN = (64, 32, 16)
DENSE = ("dense_64", "dense_32", "dense_16", "output")
SHARED = ("dense_64", "dense_32")  # the kernels the trace norm couples across genes
L1_KERNELS = ("first", "dense_64", "dense_32", "dense_16")  # where the seed declares L1


def init_weights(n_genes: int, n_tfs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Keras' defaults, per gene: Glorot-uniform kernels, zero biases."""
    def glorot(shape):
        fan_in, fan_out = shape[-2], shape[-1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(n_genes, *shape)).astype(np.float32)

    weights = {"first_kernel": glorot((n_tfs, 5, 1))[..., 0],
               "first_bias": np.zeros((n_genes, n_tfs), np.float32)}
    sizes = (n_tfs, *HIDDEN, 1)
    for name, fan_in, fan_out in zip(DENSE, sizes[:-1], sizes[1:]):
        weights[f"{name}_kernel"] = glorot((fan_in, fan_out))
        weights[f"{name}_bias"] = np.zeros((n_genes, fan_out), np.float32)
    return weights


def first_layer_coefficients(weights, act_mean, act_sum, shift, scale, constant):
    """A and C such that the first layer's pre-activation is e·A + C.

    act_mean, act_sum: (G, T) activity; shift, scale: (G, T) the split's
    standardization of e (mean and std; 0 and 1 where the std is 0);
    constant: (G, T) bool, True where the std is 0.
    """
    w = weights["first_kernel"]
    sign_or_raw = lambda a: tf.where(constant, a, tf.sign(a))  # noqa: E731
    slope = w[..., 0] + w[..., 3] * sign_or_raw(act_mean) + w[..., 4] * sign_or_raw(act_sum)
    offset = w[..., 1] * act_mean + w[..., 2] * act_sum + weights["first_bias"]
    a = slope / scale
    return a, offset - a * shift


@tf.function(jit_compile=True)
def _first_layer(expression, cells, a, c):
    return tf.nn.relu(tf.gather(expression, cells) * a[:, None, :] + c[:, None, :])


@tf.function(jit_compile=True)
def _masked_rows(expression, cells, a, c):
    rows = tf.gather(expression, cells)
    mask = tf.cast(rows * a[:, None, :] + c[:, None, :] > 0, rows.dtype)
    return mask * rows, mask


def first_layers(expression, cells, a, c, kernel):
    """relu(e·A + C) @ W64 for each gene's batch: (G, B, 64), before Dense(64)'s bias,
    from the tissue's cells x TFs matrix, cell indices (G, B) and the kernel (G, T, 64).

    With h = mask·(e·A + C) (mask: where the pre-activation is positive) and dz the
    upstream gradient, the backward pass is two products of the forward's size,
    M = (mask·e)ᵀ dz and N = maskᵀ dz, and then dW = A·M + C·N, dA = Σ W·M and
    dC = Σ W·N: no (G, B, T) gradient tensor is formed. Gather, multiply-add and
    ReLU (and the masks) are one compiled kernel each way, the products
    TensorFlow's own; the batch's rows are gathered again rather than kept, and
    expression gets no gradient (it is data)."""
    @tf.custom_gradient
    def layers(a, c, kernel):
        def gradient(upstream):
            masked, mask = _masked_rows(expression, cells, a, c)
            m = tf.matmul(masked, upstream, transpose_a=True)  # (G, T, 64)
            n = tf.matmul(mask, upstream, transpose_a=True)
            return (tf.reduce_sum(kernel * m, axis=2), tf.reduce_sum(kernel * n, axis=2),
                    a[:, :, None] * m + c[:, :, None] * n)
        return tf.matmul(_first_layer(expression, cells, a, c), kernel), gradient
    return layers(a, c, kernel)


def predict(weights, expression, cells, a, c):
    """Predictions (G, B) for cell indices (G, B) into expression (cells, T)."""
    hidden = tf.nn.relu(first_layers(expression, cells, a, c, weights["dense_64_kernel"])
                        + weights["dense_64_bias"][:, None, :])
    for name in DENSE[1:]:
        hidden = tf.matmul(hidden, weights[f"{name}_kernel"]) + weights[f"{name}_bias"][:, None, :]
        if name != "output":
            hidden = tf.nn.relu(hidden)
    return hidden[..., 0]


@tf.custom_gradient
def nuclear_norm(matrix):
    """Sum of singular values of a wide (G x n, G small) matrix; gradient U Vᵀ.

    The thin SVD comes from the G x G Gram matrix in float64: A Aᵀ = U Σ² Uᵀ
    and U Vᵀ = (U Σ⁻¹ Uᵀ) A. For G ≪ n this is one small eigendecomposition and
    two thin matmuls, where a direct SVD of the G x T·64 kernel costs ~18 matmuls
    of the forward pass at T = 1600.

    Every direction gets its unit subgradient, as the seed's U Vᵀ gives it,
    except those whose singular value the float64 Gram cannot tell from 0:
    forming A Aᵀ from float32 entries and its eigendecomposition err by at most
    ~max(G, n)·eps64·σ_max² in σ², so σ below √(max(G, n)·eps64)·σ_max (5e-6 of
    σ_max at T = 1600) is treated as 0 and its direction gets no gradient (the
    minimal-norm subgradient there). The products stay in float64, so a
    direction just above that floor still gets U Vᵀ to float32 accuracy.
    """
    wide = tf.cast(matrix, tf.float64)
    eigenvalues, u = tf.linalg.eigh(tf.matmul(wide, wide, transpose_b=True))
    sigma = tf.sqrt(tf.maximum(eigenvalues, 0.0))
    tolerance = tf.reduce_max(sigma) * tf.sqrt(
        float(np.finfo(np.float64).eps) * tf.cast(tf.reduce_max(tf.shape(matrix)), tf.float64))
    inverse = tf.where(sigma > tolerance, 1.0 / tf.where(sigma > tolerance, sigma, 1.0), 0.0)

    def gradient(upstream):
        # U Σ⁻¹ Uᵀ is G x G: one product with A instead of two.
        u_v = tf.matmul(tf.matmul(u * inverse[None, :], u, transpose_b=True), wide)
        return tf.cast(upstream, matrix.dtype) * tf.cast(u_v, matrix.dtype)

    return tf.cast(tf.reduce_sum(sigma), matrix.dtype), gradient


def trace_norm(weights):
    """Mean over the shared kernels of the nuclear norm of the gene-axis unfolding."""
    norms = [nuclear_norm(tf.reshape(weights[f"{name}_kernel"],
                                     (tf.shape(weights[f"{name}_kernel"])[0], -1)))
             for name in SHARED]
    return tf.add_n(norms) / len(norms)


def l1_norm(weights):
    """Mean over genes of the sum of |kernel| over the layers the seed declares L1 on."""
    n_genes = tf.cast(tf.shape(weights["first_kernel"])[0], tf.float32)
    return tf.add_n([tf.reduce_sum(tf.abs(weights[f"{name}_kernel"]))
                     for name in L1_KERNELS]) / n_genes


def loss(weights, expression, cells, a, c, target, lam, l1):
    """(total loss, mean MSE) for one batch per gene: cells and target (G, B); l1 the L1
    term's weight, or None for none."""
    mse = tf.reduce_mean(tf.square(target - predict(weights, expression, cells, a, c)))
    total = mse + lam * trace_norm(weights)
    if l1 is not None:  # None: no L1 term (the seed's); a number or tensor: its weight
        total += l1 * l1_norm(weights)
    return total, mse


class _WritableAlias:
    """A writable array interface over a read-only array's memory, holding the array
    alive: DLPack as TensorFlow reads it cannot mark a buffer read-only, and an
    object-store array (shared by every worker of a node) is read-only. TensorFlow
    never writes to an input tensor, so the alias is never written."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.__array_interface__ = {**array.__array_interface__, "data": (array.ctypes.data, False)}


def shared_tensor(array: np.ndarray) -> tf.Tensor:
    """The tissue's expression matrix as a tensor without a host copy.

    An aligned, C-ordered float32 array (the store's loader and Ray's object store
    give such arrays) becomes a CPU tensor over the same memory; on a GPU host it
    is copied from there straight to the device. Anything else is copied."""
    if array.dtype != np.float32 or not is_aligned(array):
        return tf.constant(array)
    view = array if array.flags.writeable else np.asarray(_WritableAlias(array))
    host = tf.experimental.dlpack.from_dlpack(view.__dlpack__())
    if not tf.config.list_logical_devices("GPU"):
        return host
    with tf.device("/GPU:0"):
        return tf.identity(host)
