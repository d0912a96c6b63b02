"""One fine-tuning loop for pruning, sparsity and QAT.

Training data streams from the calibration layer's :class:`~edgepack.calibration.Dataset` through
``tf.data`` (see :mod:`edgepack.optimize.traindata`). A seeded held-out split drives early stopping
(best weights restored). With labels the task loss is used; without labels, or with ``distill``, the
original model is the teacher and the student learns its outputs (MSE on logits, KL divergence on
probabilities), so unlabelled data is enough. Training runs under a ``tf.distribute`` strategy when
asked. Each epoch shows a progress bar on a terminal and logs one line when it ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.optimize.graph import keras_module
from edgepack.optimize.traindata import TrainingData, predict
from edgepack.request import DISTRIBUTE, OptimizeOptions

__all__ = ["FinetuneOptions", "FinetuneResult", "TrainingData", "finetune", "predict"]

log = logging.getLogger(__name__)
EpochHook = Callable[[str, int, str, float], None]


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = OptimizeOptions.epochs
    distill: bool = False
    distribute: str | None = None  # None or "mirrored"
    seed: int = 0
    batch_size: int = 32
    validation_split: float = 0.1
    patience: int = 3
    learning_rate: float = 1e-3  # QAT uses qat.LEARNING_RATE unless --learning-rate is given
    # Called after every epoch with (phase label, epoch, metric name, held-out score): the tuner's
    # pruner stops hopeless trials from it (by raising errors.StopRequested).
    on_epoch: EpochHook | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FinetuneResult:
    epochs: int
    target: str  # "labels" or "teacher"
    loss: float
    val_loss: float
    metric: str  # "accuracy", "teacher_agreement" or "teacher_mse"
    before: float
    after: float
    replicas: int
    teacher: float  # the original model's score on the same held-out split
    history: dict[str, list[float]] = field(default_factory=dict)
    learning_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "target": self.target, "final_loss": self.loss,
                "final_val_loss": self.val_loss, "metric": self.metric, f"{self.metric}_before": self.before,
                f"{self.metric}_after": self.after, f"{self.metric}_original": self.teacher,
                "replicas": self.replicas, "learning_rate": self.learning_rate,
                "history": self.history}  # per epoch: the fine-tuning curves report.html draws


def is_probability(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[-1] > 1 and bool(np.all(out >= 0)) and \
        bool(np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def score(out: np.ndarray, data: TrainingData, teacher_out: np.ndarray, use_labels: bool) -> tuple[str, float]:
    """Accuracy against labels, top-1 agreement with the teacher, or the MSE to the teacher."""
    if use_labels and out.ndim == 2 and out.shape[-1] > 1 and data.y is not None and data.y.ndim == 1:
        return "accuracy", round(float(np.mean(out.argmax(-1) == data.y)) * 100, 3)
    if out.ndim == 2 and out.shape[-1] > 1:
        return "teacher_agreement", round(float(np.mean(out.argmax(-1) == teacher_out.argmax(-1))) * 100, 3)
    return "teacher_mse", float(np.mean((out - teacher_out) ** 2))


def strategy_scope(distribute: str | None):
    """``(scope, replicas)`` for ``--distribute``: MirroredStrategy over the GPUs, else all logical CPUs."""
    if distribute is None:
        return contextlib.nullcontext(), 1
    if distribute not in DISTRIBUTE:
        from edgepack.errors import OptionError

        raise OptionError("--distribute", distribute, DISTRIBUTE)
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    cross = None if gpus else tf.distribute.ReductionToOneDevice()
    strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross)
    log.info("fine-tuning on %d replicas (%s)", strategy.num_replicas_in_sync, ", ".join(devices))
    return strategy.scope(), strategy.num_replicas_in_sync


def _epoch_progress(kmod: Any, total: int, steps: int, label: str):
    """A progress bar per epoch (stderr, terminals only) and one log line when the epoch ends."""
    from edgepack.calibration.progress import progress_bar

    class EpochProgress(kmod.callbacks.Callback):
        bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.bar = progress_bar(steps, f"{label} epoch {epoch + 1}/{total}")
            self.advance = self.bar.__enter__()

        def on_train_batch_end(self, batch, logs=None):
            self.advance(1)

        def on_epoch_end(self, epoch, logs=None):
            self.on_train_end()
            logs = logs or {}
            log.info("%s epoch %d/%d: loss %.4f, val_loss %.4f", label, epoch + 1, total,
                     logs.get("loss", float("nan")), logs.get("val_loss", float("nan")))

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return EpochProgress()


def _loss(kmod: Any, use_labels: bool, probabilities: bool, data: TrainingData):
    if use_labels and data.y is not None and data.y.ndim == 1 and np.issubdtype(data.y.dtype, np.integer):
        return kmod.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    if not use_labels and probabilities:
        return kmod.losses.KLDivergence()
    return kmod.losses.MeanSquaredError()


def _epoch_score(kmod: Any, hook: EpochHook, label: str, val: TrainingData, teacher_val: np.ndarray,
                 use_labels: bool):
    """Scores the held-out split after each epoch (the same score as before/after) for ``hook``."""

    class EpochScore(kmod.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metric, value = score(predict(self.model, val), val, teacher_val, use_labels)
            hook(label, epoch, metric, value)

    return EpochScore()


def finetune(build: Callable[[], Any], teacher: Any, data: TrainingData, opts: FinetuneOptions, *,
             label: str = "fine-tune", callbacks: Callable[[Any], list] | None = None) -> tuple[Any, FinetuneResult]:
    """Build the student inside the strategy scope, train it, and score it before and after."""
    train, val = data.split(opts.validation_split, opts.seed)
    teacher_val = predict(teacher, val)
    use_labels = data.y is not None and not opts.distill
    probabilities = is_probability(teacher_val)
    scope, replicas = strategy_scope(opts.distribute)
    with scope:
        model = build()
        kmod = keras_module(model)
        model.compile(optimizer=kmod.optimizers.Adam(opts.learning_rate),
                      loss=_loss(kmod, use_labels, probabilities, data))
    metric, before = score(predict(model, val), val, teacher_val, use_labels)
    # Streamed: the strategy splits each global batch over the replicas.
    batch = opts.batch_size * replicas
    source = None if use_labels else teacher
    train_ds = train.tf_dataset(batch, teacher=source, seed=opts.seed)
    val_ds = val.tf_dataset(batch, teacher=source)
    stop = kmod.callbacks.EarlyStopping(monitor="val_loss", patience=opts.patience, restore_best_weights=True)
    extra = callbacks(kmod) if callbacks else []
    if opts.on_epoch is not None:
        extra.append(_epoch_score(kmod, opts.on_epoch, label, val, teacher_val, use_labels))
    steps = -(-len(train) // batch)
    hist = model.fit(train_ds, validation_data=val_ds, epochs=opts.epochs, verbose=0, shuffle=False,
                     callbacks=[stop, _epoch_progress(kmod, opts.epochs, steps, label), *extra])
    history = {k: [round(float(v), 6) for v in vals] for k, vals in hist.history.items()}
    _, after = score(predict(model, val), val, teacher_val, use_labels)
    best = int(np.argmin(history["val_loss"])) if history.get("val_loss") else -1
    result = FinetuneResult(epochs=len(history.get("loss", [])), target="labels" if use_labels else "teacher",
                            loss=history["loss"][best], val_loss=history["val_loss"][best], metric=metric,
                            before=before, after=after, replicas=replicas,
                            teacher=score(teacher_val, val, teacher_val, use_labels)[1], history=history,
                            learning_rate=opts.learning_rate)
    return model, result
