"""The training loop for one (tissue, cluster, replicate, λ); it knows nothing of Ray.

    trainer = ClusterTrainer(data, trial, settings, split, seed)
    result = trainer.fit(epochs, on_epoch=callback)   # callback returns True to stop

After every epoch the callback gets an `EpochReport`: per-gene validation R²
(sklearn's r2_score semantics) and their mean, the mean training loss,
steps/s, and the best epoch so far with its genes' validation and test R²
(test R² is computed from the best epoch's weights, which are kept), so a
caller that stops early still holds a complete result. `save` / `restore`
write and read the whole state (weights, best weights, Adam's moments, the
batch sampler) as `.npz`, and `best_model` gives the best weights alone; a restored run continues exactly as an
uninterrupted one would on the CPU.
"""

from __future__ import annotations

import functools
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

from ..config import TrainingConfig
from ..data.store import write_atomically
from ..errors import TrainingError
from . import model
from .cluster_data import (
    ClusterData,
    GeneSplit,
    epoch_batches,
    padded,
    prepare_splits,
    r2_scores,
)
from .trial import Trial

EVAL_CHUNK = 256  # cells per gene per evaluation step: (G, 256, T) temporaries
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}  # Keras' defaults, as the seed used


@dataclass
class EpochReport:
    epoch: int  # 1-based
    val_r2: np.ndarray  # (G,)
    mean_val_r2: float
    train_loss: float
    steps_per_s: float
    best_epoch: int
    best_val_r2: np.ndarray  # (G,) at best_epoch
    best_test_r2: np.ndarray  # (G,) at best_epoch


@dataclass
class TrainResult:
    genes: list[str]
    val_r2: np.ndarray  # at the best epoch
    test_r2: np.ndarray  # at the best epoch
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def configure_runtime(cpus: float, deterministic_ops: bool = False) -> int:
    """Size TensorFlow's thread pools to the CPUs a caller was given, let it grow GPU
    memory as needed (so trials can share a GPU) and, if asked, use only its
    deterministic kernels; returns how many GPUs TensorFlow sees. Takes effect only
    before the process runs its first TensorFlow op; later calls change nothing."""
    threads = max(1, int(cpus))
    gpus = tf.config.list_physical_devices("GPU")
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already runs in this process (a reused worker): keep its settings
    return len(gpus)


class ClusterTrainer:
    def __init__(self, data: ClusterData, trial: Trial, settings: TrainingConfig,
                 split: dict[str, np.ndarray], seed: int):
        self.data, self.trial, self.settings = data, trial, settings
        self.splits: dict[str, GeneSplit] = prepare_splits(data, split, settings.standardize)
        # Initial weights and batches depend on the trial's group, not on λ, so
        # every λ of a (tissue, cluster, replicate) starts from the same point.
        init_rng, self.batch_rng = [np.random.default_rng(s) for s in
                                    np.random.SeedSequence([seed, trial.replicate, trial.cluster]).spawn(2)]
        weights = model.init_weights(len(data.genes), data.expression.shape[1], init_rng)
        self.weights = {k: tf.Variable(v, name=k) for k, v in weights.items()}
        self.moments = {k: (tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
                        for k, v in weights.items()}
        self.step_count = tf.Variable(0, dtype=tf.int64)
        self.expression = model.shared_tensor(data.expression)
        self.activity = (tf.constant(data.act_mean), tf.constant(data.act_sum))
        self.hyper = (tf.constant(trial.lam, tf.float32), tf.constant(settings.learning_rate, tf.float32),
                      tf.constant(settings.l1, tf.float32))
        self.epoch = 0
        self.best_epoch = 0
        self.best_weights = {k: v.copy() for k, v in weights.items()}
        self.best_val_r2 = np.full(len(data.genes), -np.inf)
        self.best_test_r2 = np.zeros(len(data.genes))
        self.history: list[dict] = []
        self._train_standardization = _tensors(self.splits["train"].standardization)
        self._evaluation: dict[str, tuple] = {}

    def _state(self) -> _State:
        return _State(self.weights, self.moments, self.step_count, self.expression, self.activity,
                      *self.hyper)

    def train_step(self, cells, target):
        """One batch per gene, cells and targets (G, B): forward, backward, Adam; the loss."""
        step, _ = compiled(*self.data.act_mean.shape)
        return step(self._state(), self._train_standardization, cells, target, self.settings.l1 != 0)

    # -- evaluation -----------------------------------------------------------
    def predict_r2(self, split: str) -> np.ndarray:
        """Per-gene R² of the current weights on a split."""
        cells, target, mask, standardization, ss_tot = self._evaluation_data(split)
        _, evaluate = compiled(*self.data.act_mean.shape)
        ss_res = np.zeros(len(self.data.genes))
        for start in range(0, cells.shape[1], EVAL_CHUNK):
            part = slice(start, start + EVAL_CHUNK)
            ss_res += evaluate(self._state(), standardization, cells[:, part], target[:, part],
                               mask[:, part]).numpy()
        return r2_scores(ss_res, ss_tot)

    def _evaluation_data(self, split: str):
        """A split's padded cells, targets and mask, standardization and total sum of
        squares: fixed for the trainer's life, so built once."""
        if split not in self._evaluation:
            gene_split = self.splits[split]
            ss_tot = np.array([np.sum((y - y.mean()) ** 2) for y in gene_split.target])
            self._evaluation[split] = (*padded(gene_split, EVAL_CHUNK),
                                       _tensors(gene_split.standardization), ss_tot)
        return self._evaluation[split]

    # -- the loop -------------------------------------------------------------
    def fit(self, epochs: int, on_epoch: Callable[[EpochReport], bool | None] | None = None) -> TrainResult:
        """Train until `epochs` epochs are done (counting restored ones) or the
        callback returns True."""
        train = self.splits["train"]
        while self.epoch < epochs:
            cells, targets, bounds = epoch_batches(train, self.settings.batch_size, self.batch_rng)
            cells, targets = tf.constant(cells), tf.constant(targets)
            started, losses = time.perf_counter(), []
            try:
                for lo, hi in bounds:
                    losses.append(self.train_step(cells[:, lo:hi], targets[:, lo:hi]))
                loss = float(tf.reduce_mean(tf.stack(losses)))
            except tf.errors.OpError as exc:  # e.g. an eigendecomposition that did not converge
                raise TrainingError(f"{self.trial.describe()}, epoch {self.epoch + 1}: training "
                                    f"failed: {exc.message}") from None
            elapsed = time.perf_counter() - started
            self.epoch += 1
            if not np.isfinite(loss):
                raise TrainingError(f"{self.trial.describe()}, epoch {self.epoch}: the loss is "
                                    f"{loss}; lower training.learning_rate or λ.")
            report = self._finish_epoch(loss, len(bounds) / elapsed)
            if on_epoch is not None and on_epoch(report):
                break
        return self.result()

    def _finish_epoch(self, loss: float, steps_per_s: float) -> EpochReport:
        val_r2 = self.predict_r2("val")
        if val_r2.mean() > self.best_val_r2.mean():
            self.best_epoch, self.best_val_r2 = self.epoch, val_r2
            self.best_weights = {k: v.numpy() for k, v in self.weights.items()}
            self.best_test_r2 = self.predict_r2("test")
        self.history.append({"epoch": self.epoch, "mean_val_r2": float(val_r2.mean()),
                             "train_loss": loss, "steps_per_s": steps_per_s})
        return EpochReport(self.epoch, val_r2, float(val_r2.mean()), loss, steps_per_s,
                           self.best_epoch, self.best_val_r2, self.best_test_r2)

    def result(self) -> TrainResult:
        return TrainResult(self.data.genes, self.best_val_r2, self.best_test_r2, self.best_epoch,
                           self.epoch, list(self.history))

    # -- state ----------------------------------------------------------------
    def best_model(self) -> bytes:
        """The best epoch's weights and the genes, as a model file's bytes (.npz)."""
        buffer = io.BytesIO()
        np.savez(buffer, genes=np.array(self.data.genes), **self.best_weights)
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        """Everything needed to continue, as one .npz (written atomically)."""
        arrays = {f"weights/{k}": v.numpy() for k, v in self.weights.items()}
        arrays |= {f"best/{k}": v for k, v in self.best_weights.items()}
        for k, (m, v) in self.moments.items():
            arrays[f"adam_m/{k}"], arrays[f"adam_v/{k}"] = m.numpy(), v.numpy()
        arrays |= {"best_val_r2": self.best_val_r2, "best_test_r2": self.best_test_r2,
                   "counters": np.array([self.epoch, self.best_epoch, int(self.step_count.numpy())]),
                   "state": np.array(json.dumps({"batch_rng": self.batch_rng.bit_generator.state,
                                                 "history": self.history, "genes": self.data.genes}))}
        write_atomically(Path(path), lambda temporary: _savez(temporary, arrays))

    def restore(self, path: str | Path) -> None:
        with np.load(path) as saved:
            state = json.loads(str(saved["state"]))
            if state["genes"] != self.data.genes:
                raise TrainingError(f"{path} was saved for other genes than {self.trial.describe()}")
            for k in self.weights:
                self.weights[k].assign(saved[f"weights/{k}"])
                self.moments[k][0].assign(saved[f"adam_m/{k}"])
                self.moments[k][1].assign(saved[f"adam_v/{k}"])
            self.best_weights = {k: saved[f"best/{k}"] for k in self.weights}
            self.best_val_r2, self.best_test_r2 = saved["best_val_r2"], saved["best_test_r2"]
            self.epoch, self.best_epoch, steps = (int(x) for x in saved["counters"])
        self.step_count.assign(steps)
        self.batch_rng.bit_generator.state = state["batch_rng"]
        self.history = state["history"]


@functools.lru_cache(maxsize=None)
def compiled(genes: int, tfs: int) -> tuple:
    """The step and the evaluation for clusters of `genes` genes over `tfs` TFs, as
    tf.functions shared by every trainer of that shape in the process: each traces once
    per batch width and then once with the width relaxed. A trainer's own tf.functions
    traced anew for each trainer, and a worker that trains trial after trial kept every
    trace (6.6 MB of memory a trial; tensorflow/tensorflow#62854). One function for all
    shapes, relaxed in the genes and TFs too, fails in TensorFlow 2.21 once a third
    shape comes ("Incompatible shapes" in a gradient's BroadcastGradientArgs)."""
    return (tf.function(_train_step, reduce_retracing=True),
            tf.function(_evaluate_chunk, reduce_retracing=True))


class _State(NamedTuple):
    """What the step and the evaluation read and write, passed to them as arguments, so
    that trainers of one shape share their traces (`compiled`)."""

    weights: dict[str, tf.Variable]
    moments: dict[str, tuple[tf.Variable, tf.Variable]]
    step_count: tf.Variable
    expression: tf.Tensor
    activity: tuple[tf.Tensor, tf.Tensor]
    lam: tf.Tensor
    learning_rate: tf.Tensor
    l1: tf.Tensor


def _coefficients(state: _State, standardization):
    return model.first_layer_coefficients(state.weights, *state.activity, *standardization)


def _train_step(state: _State, standardization, cells, target, with_l1: bool):
    with tf.GradientTape() as tape:
        a, c = _coefficients(state, standardization)
        total, _ = model.loss(state.weights, state.expression, cells, a, c, target, state.lam,
                              state.l1 if with_l1 else None)
    names = list(state.weights)
    grads = tape.gradient(total, [state.weights[k] for k in names])
    _adam(state, dict(zip(names, grads)))
    return total


def _adam(state: _State, grads):
    """Adam as Keras applies it (its default β and ε), in TensorFlow's fused kernel:
    m += (g - m)(1 - β1), v += (g² - v)(1 - β2),
    w -= lr·sqrt(1 - β2^t)/(1 - β1^t) · m / (sqrt(v) + ε)."""
    state.step_count.assign_add(1)
    t = tf.cast(state.step_count, tf.float32)
    for name, grad in grads.items():
        m, v = state.moments[name]
        tf.raw_ops.ResourceApplyAdam(
            var=state.weights[name].handle, m=m.handle, v=v.handle,
            beta1_power=ADAM["beta_1"] ** t, beta2_power=ADAM["beta_2"] ** t,
            lr=state.learning_rate, beta1=ADAM["beta_1"], beta2=ADAM["beta_2"],
            epsilon=ADAM["epsilon"], grad=grad)


def _evaluate_chunk(state: _State, standardization, cells, target, mask):
    a, c = _coefficients(state, standardization)
    pred = model.predict(state.weights, state.expression, cells, a, c)
    return tf.reduce_sum(tf.square(target - pred) * mask, axis=1)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a handle: given a path, numpy would append ".npz"
        np.savez(handle, **arrays)


def _tensors(standardization):
    return (tf.constant(standardization.shift), tf.constant(standardization.scale),
            tf.constant(standardization.constant))
