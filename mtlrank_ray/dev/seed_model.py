"""The seed notebook's per-gene Keras model, features and loss.

Kept as the reference the batched model is tested against (tests) and
measured against (`python -m mtlrank_ray.dev.bench`); training never uses it.

`build_model`, `nuclear_norm`, `TensorUnfold` and `trace_norm` are the
notebook's (steps 1 and 6); `seed_features` and `seed_loss` follow its
`train_test` and `train_step` line by line. Only two things are added: the
features of a split can be standardized with another split's statistics (our
`standardize: train`), and λ is a parameter instead of the literal 0.01.
"""

import numpy as np
import tensorflow as tf
from tensorflow.keras import Model
from tensorflow.keras.layers import Dense, Input, concatenate


def build_model(num_tf, num_feature_type):
    inputs = [Input(shape=(num_feature_type,)) for i in range(num_tf)]
    concat_layer = [Dense(1, activation="relu", kernel_regularizer=tf.keras.regularizers.l1(0.01))(inp) for inp in inputs]
    concat_layer = concatenate(concat_layer)
    out = Dense(64, activation="relu", kernel_regularizer=tf.keras.regularizers.l1(0.01))(concat_layer)
    out = Dense(32, activation="relu", kernel_regularizer=tf.keras.regularizers.l1(0.01))(out)
    out = Dense(16, activation="relu", kernel_regularizer=tf.keras.regularizers.l1(0.01))(out)
    out = Dense(1, activation="linear")(out)
    model = Model(inputs=inputs, outputs=out)
    return (model)


@tf.custom_gradient
def nuclear_norm(x):
    sigma = tf.linalg.svd(x, full_matrices=False, compute_uv=False)
    norm = tf.reduce_sum(sigma)

    def nuclear_norm_grad(dy):
        _, U, V = tf.linalg.svd(x, full_matrices=False, compute_uv=True)
        grad = tf.matmul(U, tf.transpose(V))
        return dy * grad

    return norm, nuclear_norm_grad


def TensorUnfold(A, k):
    tmp_arr = np.arange(A.shape.ndims)
    A = tf.transpose(A, [tmp_arr[k]] + np.delete(tmp_arr, k).tolist())
    A = tf.reshape(A, [A.shape[0], np.prod(A.shape[1:])])
    return A


def trace_norm(X):
    return nuclear_norm(TensorUnfold(X, -1))


def _standardize(column, reference):
    if np.std(reference) != 0:
        return (column - np.mean(reference)) / np.std(reference)
    return column


def seed_features(expr, m, s, stats_expr=None):
    """The five features of one gene for each TF, as the notebook builds them.

    expr: (cells, T) the split's expression; m, s: (T,) the gene's activity.
    stats_expr: the expression whose statistics standardize (default: expr).
    """
    stats_expr = expr if stats_expr is None else stats_expr
    features = []
    for i in range(expr.shape[1]):
        x = np.empty((expr.shape[0], 5))
        ref = np.empty((stats_expr.shape[0], 5))
        for arr, e in ((x, expr[:, i]), (ref, stats_expr[:, i])):
            arr[:, 0] = e
            arr[:, 1] = m[i]
            arr[:, 2] = s[i]
            arr[:, 3] = arr[:, 0] * arr[:, 1]
            arr[:, 4] = arr[:, 0] * arr[:, 2]
        for col in (0, 3, 4):
            x[:, col] = _standardize(x[:, col], ref[:, col])
        features.append(x.astype(np.float32))
    return features


def seed_loss(models, x_batches, y_batches, num_tf, lam):
    """The notebook's train_step loss: mean MSE + λ · mean trace norm."""
    mse = tf.keras.losses.MeanSquaredError()
    y_pred = [models[k](x, training=True) for k, x in enumerate(x_batches)]
    MSE = [tf.reduce_mean(mse(y, y_pred[k])) for k, y in enumerate(y_batches)]
    sharable_weights = []
    for layer in [num_tf * 2, num_tf * 2 + 2]:
        sharable_weights.append(tf.stack([model.trainable_weights[layer] for model in models], axis=-1))
    tracenorm = [trace_norm(sharable_weights[k]) for k in range(len(sharable_weights))]
    return tf.reduce_mean(MSE) + tf.math.multiply(lam, tf.reduce_mean(tracenorm))
