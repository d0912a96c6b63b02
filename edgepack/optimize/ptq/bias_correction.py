"""Empirical bias correction (Nagel et al. 2019, section 4.2), on the ONNX graph.

Rounding a layer's weights to int8 shifts the mean of its outputs by ``E[conv(x, W_q - W)]``: a
few weights per channel (a 3x3 depthwise kernel has 9) do not average their rounding errors out,
and the shift passes through every later layer. The shift is measured on the calibration data:
a probe graph runs, beside each Conv/Gemm, the same op with the weight error ``W_q - W`` as its
weights (onnxruntime, so padding and groups count exactly), and the per-channel mean of that
is subtracted from the layer's bias. ``W_q`` is what TensorFlow's converter makes: symmetric int8,
per output channel (``scale = max|w| / 127``) or per tensor (``--per-tensor``), of the weights
after batch norms are folded in (``batchnorm.py``).

The inputs are the float model's own: the error that int8 activations add upstream is not
modelled (the expected shift of a layer's own weight rounding is).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgepack.optimize.ptq.batchnorm import fold_batchnorms
from edgepack.optimize.ptq.onnx_graph import (
    GraphIndex,
    attr,
    drop_unused_constants,
    session,
    set_initializer,
    unique_name,
)

log = logging.getLogger(__name__)


def quantization_error(w: np.ndarray, *, per_tensor: bool = False, axis: int = 0) -> np.ndarray:
    """``W_q - W`` for symmetric int8 with scale max|w|/127, per slice along ``axis`` (or per tensor)."""
    w = np.asarray(w, np.float64)
    if per_tensor:
        peak = np.full((1,) * w.ndim, np.abs(w).max())
    else:
        peak = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis), keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(np.round(w / scale), -127, 127) * scale - w


def _layers(graph, idx: GraphIndex) -> list[tuple[Any, int]]:
    """Conv and Gemm (alpha = beta = 1) nodes with constant weights, and their output-channel axis."""
    found = []
    for node in graph.node:
        if node.op_type == "Conv" and idx.value(node.input[1]) is not None:
            found.append((node, 0))
        elif (node.op_type == "Gemm" and idx.value(node.input[1]) is not None and not attr(node, "transA", 0)
              and attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0):
            found.append((node, 0 if attr(node, "transB", 0) else 1))
    return found


def _probe(proto, layers, idx: GraphIndex, per_tensor: bool):
    """A copy of ``proto`` with one extra output per layer: the layer's op run with ``W_q - W``."""
    import onnx
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = []
    for i, (node, axis) in enumerate(layers):
        dw = quantization_error(idx.value(node.input[1]), per_tensor=per_tensor, axis=axis).astype(np.float32)
        w_name, out = f"__ptq_bc_dw_{i}", f"__ptq_bc_out_{i}"
        probe.graph.initializer.append(numpy_helper.from_array(dw, w_name))
        extra = helper.make_node(node.op_type, [node.input[0], w_name], [out], name=f"__ptq_bc_{i}")
        extra.attribute.extend(a for a in node.attribute if not (node.op_type == "Gemm" and a.name == "beta"))
        probe.graph.node.append(extra)
        probe.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
        names.append(out)
    return probe, names


def _mean_shifts(probe, names: list[str], layers, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = session(probe)
    sums: list[np.ndarray | None] = [None] * len(names)
    for feed in feeds:
        for i, y in enumerate(sess.run(names, feed)):
            axis = 1 if layers[i][0].op_type == "Conv" else y.ndim - 1  # NCHW channels / Gemm columns
            m = np.asarray(y, np.float64).mean(axis=tuple(a for a in range(y.ndim) if a != axis))
            sums[i] = m if sums[i] is None else sums[i] + m
    return [s / len(feeds) for s in sums]


def correct_onnx(proto, feeds: list[dict[str, np.ndarray]], *, per_tensor: bool = False) -> tuple[Any, dict[str, Any]]:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    folded = fold_batchnorms(out.graph)
    idx = GraphIndex.build(out.graph)
    layers = _layers(out.graph, idx)
    record: dict[str, Any] = {"batchnorms_folded": folded, "samples": len(feeds),
                              "granularity": "per-tensor" if per_tensor else "per-channel", "layers": 0}
    if not layers:
        return proto, record
    probe, names = _probe(out, layers, idx, per_tensor)
    shifts = _mean_shifts(probe, names, layers, feeds)
    rows = []
    for (node, _), shift in zip(layers, shifts):
        b = idx.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(shift)
        b_name = unique_name(idx, f"{node.name or node.op_type}_bias_corrected")
        set_initializer(out.graph, b_name, (b - shift).astype(np.float32))
        idx.constants[b_name] = None
        if len(node.input) > 2:
            node.input[2] = b_name
        else:
            node.input.append(b_name)
        rows.append({"layer": node.name, "max_abs_shift": float(f"{np.abs(shift).max():.4g}"),
                     "max_abs_bias": float(f"{np.abs(b).max():.4g}")})
    drop_unused_constants(out.graph)
    rows.sort(key=lambda r: -r["max_abs_shift"])
    record.update(layers=len(rows), max_abs_shift=rows[0]["max_abs_shift"],
                  mean_max_abs_shift=float(f"{np.mean([r['max_abs_shift'] for r in rows]):.4g}"), largest=rows[:5])
    return out, record
