"""TF attributions from a trained cluster model: DeepLIFT's rescale rule, exact.

For each gene and cell, the prediction's difference from the prediction at the
zero background (all five features of every TF zero, the background the paper
gave deep SHAP) is split over the TFs. In this network each first-layer unit
sees one TF only, so a TF's contribution is the change of its unit times the
unit's multiplier; the multipliers are propagated back through the dense
layers with the rescale rule (a ReLU's multiplier is Δoutput / Δinput). For a
ReLU network this is exact: the contributions of a cell sum to its
prediction minus the background's (completeness), up to float rounding.
A TF's score for a gene is the sum over the gene's cells of |contribution|.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import model
from .cluster_data import pad_cells

CHUNK = 256  # cells per gene per step


def contributions(weights, expression, cells, a, c):
    """(contributions (G, B, T), prediction minus background (G, B)) for cell
    indices (G, B) into expression (cells, T), with the first layer's A and C."""
    first = tf.gather(expression, cells) * a[:, None, :] + c[:, None, :]
    hidden = [tf.nn.relu(first)]
    background = [tf.nn.relu(weights["first_bias"])[:, None, :]]  # features zero: z = bias
    pre, pre_background = [], []
    for name in model.DENSE:
        kernel, bias = weights[f"{name}_kernel"], weights[f"{name}_bias"][:, None, :]
        pre.append(tf.matmul(hidden[-1], kernel) + bias)
        pre_background.append(tf.matmul(background[-1], kernel) + bias)
        if name != "output":
            hidden.append(tf.nn.relu(pre[-1]))
            background.append(tf.nn.relu(pre_background[-1]))
    multiplier = tf.ones_like(pre[-1])
    for layer in reversed(range(len(model.DENSE))):
        multiplier = tf.matmul(multiplier, weights[f"{model.DENSE[layer]}_kernel"], transpose_b=True)
        if layer > 0:  # through the ReLU in front of this dense layer
            change = pre[layer - 1] - pre_background[layer - 1]
            slope = tf.math.divide_no_nan(hidden[layer] - background[layer], change)
            multiplier *= slope
    delta = (pre[-1] - pre_background[-1])[..., 0]
    return multiplier * (hidden[0] - background[0]), delta


_contributions = tf.function(contributions, reduce_retracing=True)


def tf_scores(weights: dict[str, np.ndarray], expression: np.ndarray, act_mean: np.ndarray,
              act_sum: np.ndarray, standardization, cells: list[np.ndarray]) -> np.ndarray:
    """(G, T): each TF's summed |contribution| over each gene's cells."""
    weights = {k: tf.constant(v) for k, v in weights.items()}
    a, c = model.first_layer_coefficients(weights, tf.constant(act_mean), tf.constant(act_sum),
                                          standardization.shift, standardization.scale,
                                          standardization.constant)
    padded, mask = pad_cells(cells, CHUNK)
    scores = np.zeros((len(cells), expression.shape[1]))
    table = model.shared_tensor(expression)
    for start in range(0, padded.shape[1], CHUNK):
        part = slice(start, start + CHUNK)
        contribution, _ = _contributions(weights, table, padded[:, part], a, c)
        scores += tf.reduce_sum(tf.abs(contribution) * mask[:, part, None], axis=1).numpy()
    return scores
