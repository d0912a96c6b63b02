"""Fine-tuning data, streamed from the calibration layer's :class:`~edgepack.calibration.Dataset`.

Samples are never all in memory at once: a seeded split by index gives the training and held-out
views (nothing copied); a ``tf.data`` pipeline reads chunks of consecutive samples in a shuffled
order, shuffles samples within a bounded buffer and batches them, and the same pipeline feeds a
``tf.distribute`` strategy. Only labels (one per sample) and model outputs on the held-out split
are kept whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgepack.calibration import Dataset
from edgepack.calibration.dataset import InputSpec
from edgepack.errors import UsageError
from edgepack.formats.base import call_keras

CHUNK = 64  # samples read from the files at a time
SHUFFLE_BUFFER = 2048  # samples held for shuffling: bounds memory whatever the dataset size


def first_output(out: Any) -> Any:
    """Fine-tuning trains on the first output of multi-output models."""
    return out[0] if isinstance(out, (list, tuple)) else out


class TrainingData:
    """A :class:`Dataset` read in the model's input order (``specs``), with its labels if any."""

    def __init__(self, data: Dataset, specs: Sequence[InputSpec]) -> None:
        self.data = data
        self.specs = list(specs)
        self.dtypes = {s.name: s.dtype for s in self.specs}

    @classmethod
    def from_dataset(cls, data: Dataset, inputs: Sequence[InputSpec]) -> TrainingData:
        return cls(data, inputs)

    @classmethod
    def from_arrays(cls, x: Sequence[np.ndarray], y: np.ndarray | None = None) -> TrainingData:
        """In-memory arrays (one per model input, in order), e.g. for the Python API and tests."""
        names = [f"input_{i}" for i in range(len(x))]
        specs = [InputSpec(n, tuple(a.shape[1:]), str(a.dtype)) for n, a in zip(names, x)]
        return cls(Dataset(dict(zip(names, x)), None if y is None else np.asarray(y)), specs)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def y(self) -> np.ndarray | None:
        return self.data.labels

    def split(self, fraction: float, seed: int) -> tuple[TrainingData, TrainingData]:
        """Seeded (train, held-out) views by index."""
        n = len(self)
        if n < 4:
            raise UsageError(f"--train-data: {n} samples are too few to fine-tune", hint="give at least 4")
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(n * fraction)))
        return self.take(np.sort(order[n_val:])), self.take(np.sort(order[:n_val]))

    def take(self, positions: np.ndarray) -> TrainingData:
        return TrainingData(self.data.take(positions), self.specs)

    def chunks(self, size: int = CHUNK, rng: np.random.Generator | None = None
               ) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
        """``(inputs in model order, labels)`` per chunk of consecutive samples; chunk order shuffled by ``rng``."""
        starts = np.arange(0, len(self), size)
        for start in (starts if rng is None else rng.permutation(starts)):
            view = self.data.take(np.arange(start, min(start + size, len(self))))
            batch = next(view.batches(size, self.dtypes))
            yield [batch[s.name] for s in self.specs], view.labels

    def head(self, n: int) -> list[np.ndarray]:
        return next(self.chunks(n))[0]

    def tf_dataset(self, batch_size: int, *, teacher: Any = None, seed: int | None = None) -> Any:
        """``(x, target)`` batches: the labels, or ``teacher``'s outputs when a teacher is given.

        With a ``seed`` the order changes every epoch (chunk order, then a bounded sample shuffle).
        """
        import tensorflow as tf

        with_labels = teacher is None
        if with_labels and self.y is None:
            raise ValueError("no labels and no teacher")
        x_sig = tuple(tf.TensorSpec((None, *self.data.sources[s.name].sample_shape), tf.as_dtype(s.dtype))
                      for s in self.specs)
        rng = None if seed is None else np.random.default_rng(seed)  # outlives each epoch's generator

        def generate():
            for xs, y in self.chunks(rng=rng):
                yield (tuple(xs), y) if with_labels else tuple(xs)

        if with_labels:
            y = self.y
            sig = (x_sig, tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))
        else:
            sig = x_sig
        ds = tf.data.Dataset.from_generator(generate, output_signature=sig).unbatch()
        if seed is not None:
            ds = ds.shuffle(min(len(self), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        # A known length lets Keras size its epochs (a generator's length is unknown to tf.data).
        ds = ds.batch(batch_size).apply(tf.data.experimental.assert_cardinality(-(-len(self) // batch_size)))
        single = len(self.specs) == 1
        if with_labels:
            ds = ds.map(lambda xs, y: (xs[0] if single else xs, y))
        else:
            def with_teacher(*xs):
                return (xs[0] if single else xs), first_output(call_keras(teacher, xs))

            ds = ds.map(with_teacher)
        options = tf.data.Options()
        # One worker: every replica's batch comes from this one pipeline (MirroredStrategy splits it).
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(1)


def predict(model: Any, data: TrainingData, batch: int = 256) -> np.ndarray:
    """The model's (first) output over ``data``, streamed a batch at a time."""
    outs = []
    for xs, _ in data.chunks(batch):
        out = first_output(call_keras(model, xs))
        outs.append(np.asarray(out, dtype=np.float32))
    return np.concatenate(outs)
