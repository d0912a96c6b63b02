"""What every model front-end produces: the format, and the loaded model with its I/O in order."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calibration import InputSpec

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


class ModelFormat(StrEnum):
    KERAS3 = "keras3"
    TF_KERAS = "tf_keras"
    TF_KERAS_H5 = "tf_keras_h5"
    KERAS3_H5 = "keras3_h5"
    SAVED_MODEL = "saved_model"
    ONNX = "onnx"


@dataclass
class LoadedModel:
    """A source model, loaded, with its I/O in the model's own order."""

    path: Path
    format: ModelFormat
    sha256: str
    inputs: list[InputSpec]
    output_names: list[str]
    model: Any = field(repr=False, default=None)  # keras / tf_keras Model, or a SavedModel signature

    @property
    def is_keras(self) -> bool:
        return self.format in (ModelFormat.KERAS3, ModelFormat.TF_KERAS, ModelFormat.TF_KERAS_H5,
                               ModelFormat.KERAS3_H5)

    @property
    def uses_keras3(self) -> bool:
        return self.format in (ModelFormat.KERAS3, ModelFormat.KERAS3_H5)

    def run(self, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Float32 outputs in the model's output order for one batch keyed by input name.
        With inputs that have no sample axis (recurrent state: each sample is a whole tensor) the model
        runs sample by sample, and an output whose first axis is not a batch of 1 (the state it
        returns) gets a sample axis."""
        whole = {s.name for s in self.inputs if s.sample_axis is None}
        if whole:
            n = len(next(iter(batch.values())))
            runs = [self._run({k: v[i] if k in whole else v[i:i + 1] for k, v in batch.items()}) for i in range(n)]
            return [np.stack([r[j] for r in runs]) if runs[0][j].ndim and runs[0][j].shape[0] != 1
                    else np.concatenate([r[j] for r in runs]) for j in range(len(runs[0]))]
        return self._run(batch)

    def _run(self, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.format is ModelFormat.SAVED_MODEL:
            import tensorflow as tf

            _, fn = self.model
            out = fn(**{signature_name(k): tf.constant(v) for k, v in batch.items()})
            outs = [out[n] for n in self.output_names]
        elif self.format is ModelFormat.ONNX:
            outs = self.model(batch)
        else:
            outs = call_keras(self.model, [batch[s.name] for s in self.inputs], self.output_names)
        return [np.asarray(o, dtype=np.float32) for o in outs]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
        return h.hexdigest()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def call_keras(model: Any, args: Sequence[Any], output_names: Sequence[str] | None = None) -> list[Any]:
    """Call a Keras model in inference mode on its inputs in order; its outputs as a list (a dict
    output is ordered by ``output_names``)."""
    out = model(list(args) if len(args) > 1 else args[0], training=False)
    if isinstance(out, dict):
        return [out[n] for n in (output_names or out)]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def signature_name(name: str) -> str:
    """A TensorFlow-legal placeholder name for a source input/output name."""
    out = _SAFE_NAME.sub("_", name)
    return out if out and out[0].isalnum() else f"t{out}"
