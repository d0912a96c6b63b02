"""An already-quantized source model's weight grids, kept in the TFLite model.

A weight that comes from a quantized ONNX model (a QDQ ``DequantizeLinear``, ``ConvInteger``,
``MatMulInteger``, ``DynamicQuantizeLSTM``) is the integers ``k = q - z`` on a grid of scale ``s``.
TensorFlow's converter quantizes the float weight ``k * s`` again with its own scale per output
channel, ``max|w| / 127``: a grid that does not hold ``k * s``, so every weight moves by up to half a
step (on ddddocr's ``common_old`` that costs as much as all of onnxruntime's activation rounding).
Where every ``k`` of an output channel fits int8's symmetric range [-127, 127], the TFLite int8 weight
can hold ``k`` itself with the scale ``s``: the effective weights are then the source's exactly.

:func:`keep_source_grids` does that on a converted model: each int8 weight tensor of a CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED or TRANSPOSE_CONV (every subgraph; full-integer and hybrid) is
matched, channel by channel, to a source channel by its values (names do not survive onnx2tf, and
layouts and gate orders change): the channel's largest magnitude picks the candidates, ``round(w /
s)`` must give the source channel's integers (as a multiset). A matched channel gets ``k`` and ``s``;
an integer bias of the op is re-scaled with it (its scale is ``s_in * s``). Channels that do not fit or
match keep TensorFlow's own quantization.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LIMIT = 127  # TFLite's int8 weights are symmetric: [-127, 127]
# op -> input positions of (weight, bias, activation)
_WEIGHT_AT = {"CONV_2D": (1, 2, 0), "DEPTHWISE_CONV_2D": (1, 2, 0), "FULLY_CONNECTED": (1, 2, 0),
              "TRANSPOSE_CONV": (1, 3, 2)}
_INT8, _INT32, _INT64 = 9, 2, 4  # schema TensorType


@dataclass
class SourceGrid:
    """One source weight: ``k`` [channels, n] (each output channel's integers, any order inside) and
    the scale of each channel."""

    name: str
    k: np.ndarray  # int16 [C, n]
    scale: np.ndarray  # float64 [C]
    _sorted: np.ndarray | None = field(default=None, repr=False)
    _index: dict | None = field(default=None, repr=False)

    @property
    def magnitudes(self) -> np.ndarray:
        return np.abs(self.k).max(axis=1).astype(np.float64) * self.scale

    def fits(self, j: int) -> bool:
        return bool(np.abs(self.k[j]).max(initial=0) <= LIMIT)

    def channel_of(self, signature: bytes) -> int | None:
        """The source channel whose sorted integers are ``signature`` (int16 bytes), else None."""
        if self._index is None:
            self._sorted = np.sort(self.k, axis=1)
            self._index = {}
            for j, row in enumerate(self._sorted):
                self._index.setdefault(row.tobytes(), j)
        return self._index.get(signature)


def source_grid(name: str, q: np.ndarray, zero_point: np.ndarray | None, scale: np.ndarray, *,
                out_axis: int, quant_axis: int | None = None) -> SourceGrid | None:
    """The grid of a quantized weight ``q`` (zero point and scale per tensor, or per ``quant_axis``),
    channels along ``out_axis``; None when a channel would hold more than one scale."""
    q = np.asarray(q)
    scale = np.asarray(scale, np.float64).reshape(-1)
    zp = np.zeros(1) if zero_point is None else np.asarray(zero_point, np.int64).reshape(-1)
    out_axis %= q.ndim
    if scale.size > 1 or zp.size > 1:
        if quant_axis is None or quant_axis % q.ndim != out_axis:
            return None
        shape = [1] * q.ndim
        shape[out_axis] = -1
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
        per = scale if scale.size > 1 else np.full(q.shape[out_axis], scale[0])
    else:
        zp, per = zp.reshape(()), np.full(q.shape[out_axis], scale[0])
    k = np.moveaxis(q.astype(np.int64) - zp, out_axis, 0).reshape(q.shape[out_axis], -1)
    if np.abs(k).max(initial=0) > np.iinfo(np.int16).max:
        return None
    return SourceGrid(name, k.astype(np.int16), per.astype(np.float64))


@dataclass
class SourceGrids:
    """Every source weight's grid; :meth:`apply` is :func:`keep_source_grids` with them."""

    grids: list[SourceGrid] = field(default_factory=list)
    _by_n: dict | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.grids)

    def candidates(self, n: int, magnitude: float, tol: float) -> list[tuple[int, int]]:
        """(grid, channel) of every source channel of ``n`` integers whose largest magnitude is within
        ``tol`` of ``magnitude``."""
        if self._by_n is None:
            entries: dict[int, list] = {}
            for g, grid in enumerate(self.grids):
                for j, m in enumerate(grid.magnitudes):
                    entries.setdefault(grid.k.shape[1], []).append((float(m), g, j))
            self._by_n = {key: (sorted(v), [e[0] for e in sorted(v)]) for key, v in entries.items()}
        found = self._by_n.get(n)
        if found is None:
            return []
        items, keys = found
        lo, hi = bisect.bisect_left(keys, magnitude - tol), bisect.bisect_right(keys, magnitude + tol)
        return [(g, j) for _, g, j in items[lo:hi]]

    def apply(self, model: bytes) -> tuple[bytes, dict[str, Any]]:
        return keep_source_grids(model, self)


def _channels(values: np.ndarray, axis: int | None) -> np.ndarray:
    """[C, n]: the channels along ``axis`` (None: the whole tensor is one)."""
    if axis is None:
        return values.reshape(1, -1)
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def match_channels(grids: SourceGrids, q: np.ndarray, scales: np.ndarray, *,
                   per_channel: bool = True) -> list[tuple[int, int] | None]:
    """For each channel of an int8 weight (``q`` [C, n], TensorFlow's ``scales`` [C]), the source
    channel (grid, channel) it holds, or None. A match: ``round(q * scale / s)`` is the source
    channel's multiset of integers, all within int8's symmetric range. TensorFlow's per-channel
    scale puts each channel's largest magnitude on 127 steps exactly; rows of a per-tensor weight
    (``per_channel`` False) are within half a step of theirs."""
    values = q.astype(np.float64) * scales[:, None]
    out: list[tuple[int, int] | None] = []
    for c in range(q.shape[0]):
        row = values[c]
        top = float(np.abs(row).max(initial=0.0))
        tol = 1e-5 * top + 1e-12 + (0.0 if per_channel else 0.5 * float(scales[c]))
        found = None
        tried: set[tuple[int, float]] = set()
        for g, j in grids.candidates(q.shape[1], top, tol):
            s = float(grids.grids[g].scale[j])
            if (g, s) in tried or s <= 0:
                continue
            tried.add((g, s))
            k = np.rint(row / s)
            if np.abs(k).max(initial=0) > LIMIT:
                continue
            hit = grids.grids[g].channel_of(np.sort(k.astype(np.int16)).tobytes())
            if hit is not None and grids.grids[g].scale[hit] == s:
                found = (g, hit)
                break
        out.append(found)
    return out


@dataclass
class _Tally:
    sources: set = field(default_factory=set)  # (grid, channel) kept
    tensors: int = 0

    def record(self, grids: SourceGrids) -> dict[str, Any]:
        kept = {g for g, _ in self.sources}
        return {"recorded": len(grids.grids), "kept": len(kept), "channels": len(self.sources),
                "of": sum(g.k.shape[0] for g in grids.grids), "tflite_tensors": self.tensors}


def keep_source_grids(model: bytes, grids: SourceGrids) -> tuple[bytes, dict[str, Any]]:
    """``model`` with every int8 weight channel that holds a source channel (:func:`match_channels`)
    on the source's grid, integer biases re-scaled; and what was kept: source weights recorded and
    kept (at least one channel), channels kept of the source's channels, TFLite tensors rewritten."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgepack.tflite_model import op_kinds

    tally = _Tally()
    if not grids:
        return model, tally.record(grids)
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # weight buffer -> (old scales, new scales)
    biases: set[int] = set()  # bias buffers re-scaled
    for sg_index, sg in enumerate(obj.subgraphs):
        kinds = op_kinds(_first(obj, sg_index))
        users = _weight_users(sg, kinds)
        for tensor, ops in users.items():
            if any(op is None for op, _ in ops):  # read by another op, or at another position
                continue
            new = _rewrite_weight(obj, sg.tensors[tensor], grids, done, tally)
            if new is None:
                continue
            for op, at in ops:
                _rescale_bias(obj, sg, op, at, new, biases)
    if not tally.tensors:
        return model, tally.record(grids)
    log.info("source weight grids kept: %s", tally.record(grids))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), tally.record(grids)


class _First:
    """A ModelT view whose first subgraph is another one (``op_kinds`` reads the first)."""

    def __init__(self, obj, sg) -> None:
        self.operatorCodes, self.subgraphs = obj.operatorCodes, [sg]


def _first(obj, index: int):
    return obj if index == 0 else _First(obj, obj.subgraphs[index])


def _weight_users(sg, kinds: list[str]) -> dict[int, list[tuple[Any, tuple]]]:
    """int8 tensor -> [(op, its (weight, bias, activation) positions)] of its readers; (None, ()) for
    a reader that is not a weight-taking op reading it as its weight."""
    users: dict[int, list] = {}
    for kind, op in zip(kinds, sg.operators or []):
        for pos, i in enumerate(op.inputs if op.inputs is not None else ()):
            if i < 0 or sg.tensors[int(i)].type != _INT8:
                continue
            at = _WEIGHT_AT.get(kind)
            users.setdefault(int(i), []).append((op, at) if at is not None and pos == at[0] else (None, ()))
    return users


def _rewrite_weight(obj, t, grids: SourceGrids, done: dict, tally: _Tally) -> np.ndarray | None:
    """The weight tensor ``t`` with its matched channels on the source grid; its new scales (for the
    biases), or None when nothing changed."""
    qp = t.quantization
    data = obj.buffers[t.buffer].data if t.buffer < len(obj.buffers) else None
    if qp is None or qp.scale is None or not len(qp.scale) or data is None or not len(data):
        return None
    old = np.asarray(qp.scale, np.float64)
    if t.buffer in done:  # the same weights read through another tensor: the same new grid
        prev_old, new = done[t.buffer]
        if len(prev_old) != len(old) or not np.array_equal(prev_old, old):
            return None
        qp.scale = new.astype(np.float32)
        return new
    shape = tuple(int(d) for d in t.shape)
    q = np.frombuffer(bytes(bytearray(data)), np.int8).reshape(shape)
    axis = int(qp.quantizedDimension or 0) if len(old) > 1 else None
    if axis is not None and shape[axis] != len(old):
        return None
    rows = _channels(q, axis if axis is not None else 0)
    scales = old if axis is not None else np.full(rows.shape[0], old[0])
    matches = match_channels(grids, rows, scales, per_channel=axis is not None)
    if axis is None:  # one scale for the tensor: every row must hold the same source grid
        grid_scales = {float(grids.grids[m[0]].scale[m[1]]) for m in matches if m is not None}
        if any(m is None for m in matches) or len(grid_scales) != 1:
            return None
    if not any(m is not None for m in matches):
        return None
    new_rows, new = rows.copy(), scales.copy()
    for c, m in enumerate(matches):
        if m is None:
            continue
        s = float(grids.grids[m[0]].scale[m[1]])
        new_rows[c] = np.rint(rows[c].astype(np.float64) * scales[c] / s).astype(np.int8)
        new[c] = s
        tally.sources.add(m)
    new = new[:1] if axis is None else new
    back = new_rows.reshape(shape) if axis is None else np.moveaxis(
        new_rows.reshape((shape[axis], *np.delete(shape, axis))), 0, axis)
    obj.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(back, np.int8).tobytes(), np.uint8)
    qp.scale = new.astype(np.float32)
    done[t.buffer] = (old, new.astype(np.float32).astype(np.float64))
    tally.tensors += 1
    return new.astype(np.float32).astype(np.float64)


def _rescale_bias(obj, sg, op, at: tuple, weight_scales: np.ndarray, biases: set[int]) -> None:
    """A full-integer op's int32/int64 bias on the scale ``s_in * s_w`` of its weight's new scales
    (TFLite's kernels check it); a hybrid op's float bias stays."""
    ins = op.inputs if op.inputs is not None else ()
    if at[1] >= len(ins) or ins[at[1]] < 0:
        return
    b = sg.tensors[int(ins[at[1]])]
    qp, x = b.quantization, sg.tensors[int(ins[at[2]])].quantization
    if (b.type not in (_INT32, _INT64) or qp is None or qp.scale is None or len(qp.scale) != len(weight_scales)
            or x is None or x.scale is None or len(x.scale) != 1 or b.buffer in biases):
        return
    dtype = np.int32 if b.type == _INT32 else np.int64
    values = np.frombuffer(bytes(bytearray(obj.buffers[b.buffer].data)), dtype).astype(np.float64)
    new = (float(x.scale[0]) * weight_scales).astype(np.float32)
    info = np.iinfo(dtype)
    scaled = np.clip(np.rint(values * np.asarray(qp.scale, np.float64) / new), info.min, info.max).astype(dtype)
    obj.buffers[b.buffer].data = np.frombuffer(scaled.tobytes(), np.uint8)
    qp.scale = new
    biases.add(b.buffer)
