"""The one dataset object used by calibration, validation and fine-tuning.

A :class:`Dataset` holds one :class:`~edgepack.calibration.source.Source` per model input (samples
read on demand, never all at once) and optional labels. It checks the data against the model's
inputs up front, with messages that name the file, the input and the sample; it selects samples
with a seed as a list of indices (nothing is copied); it hashes what it selected, so the manifest
can say exactly which samples calibrated the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgepack.calibration.arrays import OffsetArray
from edgepack.calibration.preprocess import Preprocess
from edgepack.calibration.source import ArraySource, Source, fmt_shape
from edgepack.errors import CalibrationError

_CHUNK = 64  # samples read at a time: memory stays at a few batches whatever the dataset size


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input: name, shape without the batch axis (None = any), dtype.

    ``sample_axis`` None: the input has no batch axis (a recurrent state of shape [2, batch, 128],
    a Keras input built with a fixed batch of 2); ``shape`` is then the whole tensor's, and each
    sample of the data is one whole tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    sample_axis: int | None = 0

    def tensor_shape(self, batch: int | None) -> tuple[int | None, ...]:
        """The model tensor's shape for a batch of ``batch`` samples (one whole tensor without a sample axis)."""
        return tuple(self.shape) if self.sample_axis is None else (batch, *self.shape)


class Dataset:
    """Samples keyed by model input name, plus optional labels ``y``.

    ``arrays`` maps input names to arrays (in memory or memory-mapped) or to sources; ``indices``
    (ascending) restricts the dataset to those samples without copying them.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray | OffsetArray | Source], labels: np.ndarray | None = None, *,
                 source: str = "<memory>", indices: np.ndarray | None = None) -> None:
        if not arrays:
            raise CalibrationError(f"{source}: holds no input arrays")
        self.sources: dict[str, Source] = {
            k: v if isinstance(v, Source) else ArraySource(v, where=source) for k, v in arrays.items()}
        counts = {k: len(v) for k, v in self.sources.items()}
        if len(set(counts.values())) != 1:
            raise CalibrationError(f"{source}: inputs have different sample counts {counts}",
                                   hint="every input needs one entry per sample")
        self.source = source
        self.class_names: list[str] | None = None
        self._all_labels = labels
        total = next(iter(counts.values()))
        self._indices = indices
        self._observers: tuple[Callable[[dict[str, np.ndarray]], None], ...] = ()
        if labels is not None and len(labels) != total:
            raise CalibrationError(f"{source}: {len(labels)} labels for {total} samples")

    def __len__(self) -> int:
        if self._indices is not None:
            return len(self._indices)
        return len(next(iter(self.sources.values())))

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def labels(self) -> np.ndarray | None:
        if self._all_labels is None or self._indices is None:
            return self._all_labels
        return np.asarray(self._all_labels[self._indices])

    @property
    def indices(self) -> np.ndarray:
        """Positions of this dataset's samples in the underlying files."""
        return self._indices if self._indices is not None else np.arange(len(self))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every input as one array. Plain (or memory-mapped) arrays come back as they are; anything
        else (a selection, files read by offset, images, CSV, preprocessing) is read whole here, so
        prefer :meth:`batches` for data of unknown size."""
        out = {}
        for name, src in self.sources.items():
            plain = isinstance(src, ArraySource) and isinstance(src.array, np.ndarray) and src.preprocess is None
            out[name] = src.array if plain and self._indices is None else src.read(self.indices)
        return out

    @property
    def preprocessing(self) -> dict[str, Preprocess | None]:
        """The preprocessing each input's samples get (what the manifest records)."""
        return {k: s.preprocess for k, s in self.sources.items()}

    def _view(self, indices: np.ndarray | None) -> Dataset:
        ds = Dataset.__new__(Dataset)
        ds.__dict__.update(self.__dict__)
        ds._indices = indices
        return ds

    # -- checks ---------------------------------------------------------------------------------
    def check(self, inputs: Sequence[InputSpec]) -> None:
        """Every input has data of a numeric kind and of the model's shape.

        Values (NaN/Inf, undecodable images) are checked as samples are read, naming the sample.
        """
        if len(self) == 0:
            raise CalibrationError(f"{self.source}: holds 0 samples")
        for spec in inputs:
            src = self.sources.get(spec.name)
            if src is None:
                raise CalibrationError(f"{self.source}: no data for model input {spec.name!r}",
                                       hint=f"inputs with data: {', '.join(self.names)}")
            label = f"{src.where}" + (f" input {spec.name!r}" if len(inputs) > 1 else "")
            src.check_kind(label)
            sample, want = tuple(src.sample_shape), spec.shape
            if len(sample) != len(want) or any(w is not None and w != s for w, s in zip(want, sample)):
                raise CalibrationError(
                    f"{label}: sample shape {fmt_shape(sample)} does not match model input "
                    f"{spec.name!r} shape {fmt_shape(want)}", hint=src.shape_hint)
            if np.dtype(spec.dtype).kind in "iu" and src.dtype.kind == "f":
                raise CalibrationError(f"{label}: float data ({src.dtype}) for integer model input "
                                       f"{spec.name!r} ({spec.dtype})", hint="store integers")

    # -- selection and iteration ----------------------------------------------------------------
    def select(self, count: int | None, seed: int) -> Dataset:
        """A seeded, order-preserving subset of ``count`` samples (all when count is None or larger).

        The subset is a list of indices into the same files: nothing is read or copied here.
        """
        n = len(self)
        if count is None or count >= n:
            return self
        idx = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        return self._view(self.indices[idx])

    def take(self, positions: np.ndarray) -> Dataset:
        """The samples at ``positions`` (ascending) of this dataset, as a view: nothing is read or copied."""
        return self._view(self.indices[np.asarray(positions, dtype=np.int64)])

    def observe(self, fn: Callable[[dict[str, np.ndarray]], None]) -> Dataset:
        """The same samples; ``fn`` sees every batch that :meth:`batches` yields (for statistics)."""
        ds = self._view(self._indices)
        ds._observers = (*self._observers, fn)
        return ds

    def _read(self, positions: np.ndarray, dtypes: Mapping[str, str] | None) -> dict[str, np.ndarray]:
        idx = positions if self._indices is None else self._indices[positions]
        out = {}
        for name, src in self.sources.items():
            batch = src.read(idx)
            want = (dtypes or {}).get(name)
            out[name] = batch if want is None else np.asarray(batch, dtype=want)
        return out

    def batches(self, size: int, dtypes: Mapping[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """``{input: batch}`` of up to ``size`` samples, in order, read lazily."""
        for start in range(0, len(self), size):
            chunk = self._read(np.arange(start, min(start + size, len(self))), dtypes)
            for fn in self._observers:
                fn(chunk)
            yield chunk

    def samples(self, dtypes: Mapping[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One ``{input: array with a batch axis of 1}`` per sample, in order."""
        for chunk in self.batches(_CHUNK, dtypes):
            n = len(next(iter(chunk.values())))
            for i in range(n):
                yield {k: v[i:i + 1].copy() for k, v in chunk.items()}

    def sha256(self) -> str:
        """Hash of the samples (as float32, C order): identifies the calibration set."""
        hashers = new_hashers(self.names)
        for chunk in self.batches(_CHUNK):
            update_hashers(hashers, chunk)
        return combine_hashers(hashers)


def new_hashers(names: Sequence[str]) -> dict[str, hashlib._Hash]:
    hashers = {}
    for name in names:
        hashers[name] = hashlib.sha256()
        hashers[name].update(name.encode())
    return hashers


def update_hashers(hashers: Mapping[str, hashlib._Hash], chunk: Mapping[str, np.ndarray]) -> None:
    for name, h in hashers.items():
        h.update(np.ascontiguousarray(chunk[name], dtype=np.float32).reshape(-1).view(np.uint8))  # not copied again


def combine_hashers(hashers: Mapping[str, hashlib._Hash]) -> str:
    """One input: its hash (as before multi-input support); several: the hash of their hashes, in order."""
    if len(hashers) == 1:
        return next(iter(hashers.values())).hexdigest()
    return hashlib.sha256("".join(h.hexdigest() for h in hashers.values()).encode()).hexdigest()

