"""The layout each ONNX input and output has in the TensorFlow model onnx2tf built.

onnx2tf turns 3-D to 5-D inputs channels-last and may transpose outputs. Inputs and outputs are
paired in order; each output's transpose is chosen by shape and, when onnxruntime's outputs are at
hand, by which candidate reproduces them on the same probe inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.calibration import layout
from edgepack.errors import ConversionError
from edgepack.formats.base import call_keras
from edgepack.formats.onnx import OnnxModel


@dataclass(frozen=True)
class IoMap:
    """One ONNX input or output and the TFLite tensor layout it became."""

    name: str
    source_shape: tuple[Any, ...]  # as declared in the ONNX graph (symbolic dims kept)
    tflite_shape: tuple[int, ...]
    perm: tuple[int, ...] | None  # tflite = source.transpose(perm); None = same layout
    dtype: str = "float32"
    # outputs onnx2tf transposed that the TFLite model gives back in the ONNX layout (recurrent state):
    # the permutation onnx2tf applied, undone in the serving signature
    restore: tuple[int, ...] | None = None

    def manifest_fields(self) -> dict[str, Any]:
        src_layout, _ = layout.layout_names(self.perm, len(self.tflite_shape))
        return {"source_shape": list(self.source_shape), "source_layout": src_layout,
                "perm": list(self.perm) if self.perm is not None else None}


def _input_perm(shape: tuple[int, ...], tf_shape: tuple, name: str,
                kept: bool = False) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
    """onnx2tf turns every 3-D/4-D/5-D input channels-last unless told to keep its layout
    (``kept``); other ranks keep their layout. Returns the permutation and the static TFLite shape
    (onnx2tf may leave dimensions unknown)."""
    rank = len(shape)
    if rank == 0 and len(tf_shape) == 1 and tf_shape[0] in (None, 1):
        return None, (1,)  # onnx2tf gives a scalar input one axis; the bundle's tensor holds 1 value
    perm = layout.channels_last_perm(rank) if rank in (3, 4, 5) and not kept else None
    want = tuple(shape[p] for p in perm) if perm else tuple(shape)
    if len(tf_shape) != rank or any(d is not None and int(d) != w for d, w in zip(tf_shape, want)):
        raise ConversionError(f"cannot map ONNX input {name!r} {shape} to the TensorFlow input {tuple(tf_shape)}")
    return perm, want


def _output_candidates(tf_shape: tuple[int, ...], nhwc: bool | None,
                       ref_shape: Sequence[int | None] | None) -> list[tuple[int, ...] | None]:
    """Permutations that could map the ONNX output onto onnx2tf's, most likely first: the layout
    onnx2tf reports, the same layout, channels-last, then any that fits the shapes. ``ref_shape``
    may hold None (and ``tf_shape`` -1) for dimensions that are not known."""
    rank = len(tf_shape)
    last = layout.channels_last_perm(rank) if rank >= 3 else None
    ordered = [last if nhwc else None, None, last, *itertools.permutations(range(rank))]
    out: list[tuple[int, ...] | None] = []
    for perm in ordered:
        perm = None if perm is None or tuple(perm) == tuple(range(rank)) else tuple(perm)
        if perm in out:
            continue
        if ref_shape is None or _fits(ref_shape, perm, tf_shape):
            out.append(perm)
    return out


def _fits(ref_shape: Sequence[int | None], perm: tuple[int, ...] | None, tf_shape: tuple[int, ...]) -> bool:
    """``ref_shape`` permuted by ``perm`` is ``tf_shape`` (None and -1 match anything); an ONNX scalar
    fits onnx2tf's one-element vector."""
    if len(ref_shape) == 0:
        return tf_shape in ((), (1,), (-1,))
    if len(ref_shape) != len(tf_shape):
        return False
    permuted = [ref_shape[p] for p in (perm or range(len(tf_shape)))]
    return all(x is None or y == -1 or x == y for x, y in zip(permuted, tf_shape))


def _static_shape(shape: Sequence) -> tuple[int | None, ...] | None:
    """The ONNX graph's declared output shape, unknown dimensions as None (None when undeclared)."""
    if not shape:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's magnitude (at least 1)."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if r.ndim == 0 and g.size == 1:  # an ONNX scalar output as onnx2tf's one-element vector
        g = g.reshape(())
    if g.shape != r.shape:
        return float("inf")
    if not r.size:
        return 0.0
    return float(np.max(np.abs(g - r))) / max(1.0, float(np.max(np.abs(r))))


def map_io(model: OnnxModel, tf_model, shapes: dict[str, tuple[int, ...]],
           feeds: dict[str, np.ndarray], refs: list[np.ndarray] | None,
           kept: set[str] | frozenset[str] = frozenset(),
           restore: set[str] | frozenset[str] = frozenset()) -> tuple[list[IoMap], list[IoMap], float | None]:
    """ONNX inputs/outputs -> onnx2tf's, with layouts; outputs checked on one batch against
    onnxruntime (``refs``). ``kept``: inputs onnx2tf was told to leave in the ONNX layout;
    ``restore``: outputs given back in the ONNX layout whatever onnx2tf did (recurrent state).
    Returns the maps and the largest relative difference seen."""
    if len(tf_model.inputs) != len(model.inputs) or len(tf_model.outputs) != len(model.outputs):
        raise ConversionError(f"onnx2tf produced {len(tf_model.inputs)} inputs/{len(tf_model.outputs)} outputs for "
                              f"an ONNX model with {len(model.inputs)}/{len(model.outputs)}")
    inputs = []
    for t, tf_in in zip(model.inputs, tf_model.inputs):
        perm, tf_shape = _input_perm(shapes[t.name], tuple(tf_in.shape), t.name, t.name in kept)
        inputs.append(IoMap(t.name, t.shape, tf_shape, perm, tf_in.dtype.name))
    got = None
    if refs is not None:
        args = [(np.transpose(feeds[m.name], m.perm) if m.perm else feeds[m.name]).reshape(m.tflite_shape)
                for m in inputs]
        got = [np.asarray(g) for g in call_keras(tf_model, args)]
    layouts = getattr(tf_model, "onnx_output_layouts", {}) or {}
    outputs, worst = [], 0.0 if refs is not None else None
    for i, (t, tf_out) in enumerate(zip(model.outputs, tf_model.outputs)):
        tf_shape = tuple(-1 if d is None else int(d) for d in tf_out.shape)
        ref = refs[i] if refs is not None else None
        # without onnxruntime's output, the declared ONNX shape still rules out impossible layouts
        cands = _output_candidates(tf_shape, layouts.get(t.name), ref.shape if ref is not None else
                                   _static_shape(t.shape))
        if not cands and ref is None:  # declared shapes can be stale (--input-shape): fall back to the order
            cands = _output_candidates(tf_shape, layouts.get(t.name), None)
        if not cands:
            raise ConversionError(f"cannot map ONNX output {t.name!r} {tuple(ref.shape)} to the TensorFlow "
                                  f"output {tf_shape}")
        perm = cands[0]
        if ref is not None:
            errs = [_error(got[i], np.transpose(ref, p) if p else ref) for p in cands]
            perm = cands[int(np.argmin(errs))]
            worst = max(worst, min(errs))
        if perm is not None and t.name in restore:
            source = tuple(tf_shape[i] for i in layout.inverse(perm))
            outputs.append(IoMap(t.name, t.shape, source, None, tf_out.dtype.name, restore=perm))
            continue
        if perm is not None and perm[0] != 0:
            raise ConversionError(f"onnx2tf moved the batch axis of ONNX output {t.name!r} (perm {list(perm)}); "
                                  "edgepack cannot map it back")
        outputs.append(IoMap(t.name, t.shape, tf_shape, perm, tf_out.dtype.name))
    return inputs, outputs, worst
