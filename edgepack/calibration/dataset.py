"""The one dataset object used by calibration, validation and (later) training.

A :class:`Dataset` holds one array per model input (samples on the first axis) and optional
labels. It checks the data against the model's inputs once, up front, with messages that name the
file, the input and the sample index; it selects samples with a seed; it hashes what it selected,
so the manifest can say exactly which samples calibrated the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.calibration.arrays import load_arrays
from edgepack.errors import CalibrationError

_CHUNK = 256  # samples checked at a time, so a memory-mapped file is never read whole


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input: name, shape without the batch axis (None = any), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Dataset:
    """Arrays keyed by model input name, plus optional labels ``y``."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray | None = None, *,
                 source: str = "<memory>") -> None:
        if not arrays:
            raise CalibrationError(f"{source}: holds no input arrays")
        counts = {k: len(v) for k, v in arrays.items()}
        if len(set(counts.values())) != 1:
            raise CalibrationError(f"{source}: inputs have different sample counts {counts}",
                                   hint="every input needs one entry per sample")
        self.arrays = arrays
        self.labels = labels
        self.source = source
        if labels is not None and len(labels) != len(self):
            raise CalibrationError(f"{source}: {len(labels)} labels for {len(self)} samples")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, inputs: Sequence[InputSpec], *, what: str = "--calibration",
                  label_key: str = "y", require_labels: bool = False) -> "Dataset":
        """Read ``path`` (``.npy`` for one input; ``.npz`` keyed by input name, or ``x``) for ``inputs``."""
        raw = load_arrays(path, what=what)
        labels = raw.pop(label_key, None) if len(raw) > 1 or "" not in raw else None
        arrays: dict[str, np.ndarray] = {}
        if "" in raw:  # .npy
            if len(inputs) != 1:
                raise CalibrationError(
                    f"{what} {path}: one .npy array for a model with {len(inputs)} inputs "
                    f"({', '.join(i.name for i in inputs)})", hint="give an .npz keyed by input name")
            arrays[inputs[0].name] = raw[""]
        else:
            for spec in inputs:
                if spec.name in raw:
                    arrays[spec.name] = raw[spec.name]
                elif len(inputs) == 1 and "x" in raw:
                    arrays[spec.name] = raw["x"]
                else:
                    keys = ", ".join(sorted(raw)) or "none"
                    raise CalibrationError(f"{what} {path}: no array for model input {spec.name!r} (keys: {keys})",
                                           hint=f"save it as np.savez(..., **{{{spec.name!r}: array}})")
        if require_labels and labels is None:
            raise CalibrationError(f"{what} {path}: no labels", hint=f"store them under the key {label_key!r}")
        ds = cls(arrays, labels, source=f"{what} {path}")
        ds.check(inputs)
        return ds

    # -- checks ---------------------------------------------------------------------------------
    def check(self, inputs: Sequence[InputSpec]) -> None:
        """Shape, dtype and finiteness of every array against the model's inputs."""
        if len(self) == 0:
            raise CalibrationError(f"{self.source}: holds 0 samples")
        for spec in inputs:
            arr = self.arrays[spec.name]
            label = f"{self.source}" + (f" input {spec.name!r}" if len(inputs) > 1 else "")
            if arr.dtype.kind not in "iuf":
                raise CalibrationError(f"{label}: dtype {arr.dtype} cannot feed a {spec.dtype} model input",
                                       hint="store real numbers (float32, or integers for image data)")
            sample = tuple(arr.shape[1:])
            want = spec.shape
            if len(sample) != len(want) or any(w is not None and w != s for w, s in zip(want, sample)):
                raise CalibrationError(
                    f"{label}: sample shape {_fmt_shape(sample)} does not match model input "
                    f"{spec.name!r} shape {_fmt_shape(want)}",
                    hint="the first axis is the sample axis; reshape the data to (N, *input_shape)")
            if np.dtype(spec.dtype).kind in "iu" and arr.dtype.kind == "f":
                raise CalibrationError(f"{label}: float data ({arr.dtype}) for integer model input "
                                       f"{spec.name!r} ({spec.dtype})", hint="store integers")
            if arr.dtype.kind == "f":
                for start in range(0, len(arr), _CHUNK):
                    chunk = np.asarray(arr[start:start + _CHUNK])
                    bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
                    if bad.any():
                        idx = start + int(np.argmax(bad))
                        kind = "NaN" if np.isnan(chunk[idx - start]).any() else "Inf"
                        raise CalibrationError(f"{label}: sample {idx} contains {kind}",
                                               hint="remove or fix non-finite samples")

    # -- selection and iteration ----------------------------------------------------------------
    def select(self, count: int | None, seed: int) -> "Dataset":
        """A seeded, order-preserving subset of ``count`` samples (all when count is None or larger)."""
        n = len(self)
        if count is None or count >= n:
            return self
        idx = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        arrays = {k: np.asarray(v[idx]) for k, v in self.arrays.items()}
        labels = None if self.labels is None else np.asarray(self.labels[idx])
        return Dataset(arrays, labels, source=self.source)

    def samples(self, dtypes: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One ``{input: array with a batch axis of 1}`` per sample, in order."""
        for i in range(len(self)):
            yield {k: np.asarray(v[i:i + 1], dtype=(dtypes or {}).get(k, v.dtype)) for k, v in self.arrays.items()}

    def batches(self, size: int, dtypes: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self), size):
            yield {k: np.asarray(v[i:i + size], dtype=(dtypes or {}).get(k, v.dtype)) for k, v in self.arrays.items()}

    def sha256(self) -> str:
        """Hash of the samples (as float32, C order, inputs in order): identifies the calibration set."""
        h = hashlib.sha256()
        for name in self.names:
            h.update(name.encode())
            for start in range(0, len(self), _CHUNK):
                h.update(np.ascontiguousarray(self.arrays[name][start:start + _CHUNK], dtype=np.float32).tobytes())
        return h.hexdigest()
