"""Bias correction measured on the int8 model's own activations (NNCF's scheme), on the calibrated model.

The mean output of a conv/dense layer in the int8 model drifts from the float model's: its weights
are rounded, and its inputs carry every rounding upstream. For each CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED with a float bias, the expected output before the activation is measured twice on
calibration samples: the float layer on the float model's inputs, and the int8 layer (its int8
weights, dequantized) on the int8 model's actual inputs (dequantized). The difference, per output
channel, is added to the layer's bias in the calibrated model, so the converter's int32 bias holds
it. Layers are corrected in execution order, in a few passes: each pass quantizes the model again
with the corrections so far, so a layer's shift is measured on inputs its upstream corrections
already moved. The mean of a conv over samples is the conv of the mean input (it is linear), so
one conv per layer on the mean input map is exact, padding included.

Empirical bias correction before conversion (``bias_correction.py``) measures only a layer's own
weight rounding, on float inputs, on the source graph: where the graph the converter quantizes has
other weights (onnx2tf folds or splits ops), or where upstream int8 error shifts a layer's inputs,
it corrects the wrong amount.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepack.optimize.ptq.tflite_graph import Measure, Runner, TfliteGraph, better

log = logging.getLogger(__name__)

PASSES = 4
_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _layers(g: TfliteGraph, keep_float: Sequence[str] = ()) -> list[int]:
    """Positions of the conv/dense ops with a float filter and a float bias, but those every
    quantization keeps float (``keep_float``: node names, the lstm-float cells' projections)."""
    found, floats = [], g.positions(keep_float)
    for pos, op in enumerate(g.ops):
        if op.kind in _KINDS and pos not in floats \
                and len(op.inputs) > 2 and op.inputs[2] >= 0 and len(g.consumers[op.inputs[2]]) == 1 \
                and g.constant(op.inputs[1]) is not None and g.constant(op.inputs[2]) is not None:
            found.append(pos)
    return found


def _pre_activation_mean(op, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per output channel, the spatial mean of ``op`` (no bias, no activation) on the input map ``x``."""
    import tensorflow as tf

    x = x.astype(np.float32)
    o = op.options
    if op.kind == "FULLY_CONNECTED":
        rows = x.reshape(-1, w.shape[1])
        return rows.mean(0).astype(np.float64) @ w.T.astype(np.float64)
    pad = "SAME" if getattr(o, "padding", 0) == 0 else "VALID"
    strides = [1, o.strideH, o.strideW, 1]
    dil = [getattr(o, "dilationHFactor", 1) or 1, getattr(o, "dilationWFactor", 1) or 1]
    if op.kind == "CONV_2D":
        y = tf.nn.conv2d(x, np.transpose(w, (1, 2, 3, 0)), strides, pad, dilations=dil)
    else:  # depthwise: filter [1, kh, kw, C*M] -> [kh, kw, C, M]
        c = x.shape[-1]
        k = w[0].reshape(w.shape[1], w.shape[2], c, w.shape[3] // c)
        y = tf.nn.depthwise_conv2d(x, k, strides, pad, dilations=dil)
    return np.asarray(y, np.float64).reshape(-1, np.shape(y)[-1]).mean(0)


def _mean_inputs(model: bytes, samples, tensors: dict[int, int]) -> dict[int, np.ndarray]:
    """Per op position, the mean over ``samples`` of its input tensor (``tensors``: position -> index)."""
    runner = Runner(model)
    sums: dict[int, np.ndarray] = {}
    for s in samples:
        runner.run(s)
        for pos, t in tensors.items():
            v = runner.value(t).astype(np.float64)
            sums[pos] = v if pos not in sums else sums[pos] + v
    return {pos: v / len(samples) for pos, v in sums.items()}


def _int8_filters(runner: Runner, q_ops: dict[int, Any]) -> dict[int, np.ndarray]:
    """The dequantized int8 filter of each quantized op (per-channel or per-tensor scales)."""
    out = {}
    for pos, op in q_ops.items():
        d = runner.details[op.inputs[1]]
        raw = runner.interp.get_tensor(op.inputs[1]).astype(np.float64)
        qp = d["quantization_parameters"]
        scales, zeros = np.asarray(qp["scales"], np.float64), np.asarray(qp["zero_points"], np.float64)
        if not scales.size:
            out[pos] = raw
            continue
        shape = [1] * raw.ndim
        if scales.size > 1:
            shape[qp["quantized_dimension"]] = scales.size
        zeros = np.broadcast_to(zeros, scales.shape) if zeros.size == 1 else zeros
        out[pos] = (raw - zeros.reshape(shape)) * scales.reshape(shape)
    return out


def _match(g: TfliteGraph, q: TfliteGraph, layers: list[int]) -> dict[int, Any]:
    """The quantized model's op for each float layer (same kind, same output tensor name)."""
    by_name = {(op.kind, q.name(op.outputs[0])): op for op in q.ops if op.outputs}
    found = {}
    for pos in layers:
        op = g.ops[pos]
        hit = by_name.get((op.kind, g.name(op.outputs[0])))
        if hit is not None:
            found[pos] = hit
    return found


def correct_biases(calibrated, samples: Sequence[Sequence[np.ndarray]], *, float_output: bool = False,
                   passes: int = PASSES) -> tuple[bytes, dict[str, Any]]:
    """The calibrated model with corrected biases, and the record (see the module doc)."""
    start = time.perf_counter()
    g = TfliteGraph.read(calibrated.model)
    layers = _layers(g, calibrated.keep_float)
    record: dict[str, Any] = {"layers": 0, "samples": len(samples)}
    if not layers:
        return calibrated.model, record
    float_means = _mean_inputs(calibrated.model, samples, {p: g.ops[p].inputs[0] for p in layers})
    expected = {p: _pre_activation_mean(g.ops[p], float_means[p], g.constant(g.ops[p].inputs[1])) for p in layers}
    quantized = _quantize(calibrated, calibrated.model, float_output)
    measure = Measure(calibrated.model, quantized, samples)
    before = best = measure(quantized)
    shifts: dict[int, np.ndarray] = {}
    taken = []
    for part in (p for p in np.array_split(np.asarray(layers), max(1, min(passes, len(layers)))) if len(p)):
        found = _measured_shifts(g, quantized, [int(p) for p in part], expected, samples)
        pick = "none"
        for label, factor in (("full", 1.0), ("half", 0.5)):
            trial = {**shifts, **{p: factor * s for p, s in found.items()}}
            model = _with_biases(g, trial)
            q = _quantize(calibrated, model, float_output)
            err = measure(q)
            if better(err, best):
                best, shifts, quantized, pick = err, trial, q, label
                break
        taken.append(pick)
    rows = sorted(({"layer": g.name(g.ops[p].outputs[0]), "kind": g.ops[p].kind,
                    "max_abs_shift": float(f"{np.abs(s).max():.4g}"),
                    "max_abs_bias": float(f"{np.abs(g.constant(g.ops[p].inputs[2])).max():.4g}")}
                   for p, s in shifts.items()), key=lambda r: -r["max_abs_shift"])
    record.update(layers=len(shifts), candidates=len(layers), chunks=taken,
                  calibration_error_db_before=round(float(before[0]), 2),
                  calibration_error_db_after=round(float(best[0]), 2),
                  measured_on=measure.names or "outputs", seconds=round(time.perf_counter() - start, 1),
                  largest=rows[:5])
    return (_with_biases(g, shifts) if shifts else calibrated.model), record


def _measured_shifts(g: TfliteGraph, quantized: bytes, part: list[int], expected: dict[int, np.ndarray],
                     samples) -> dict[int, np.ndarray]:
    """Per layer of ``part``, the float layer's expected output minus the int8 layer's on the int8
    model's own inputs."""
    q_ops = _match(g, TfliteGraph.read(quantized), part)
    filters = _int8_filters(Runner(quantized), q_ops)
    q_means = _mean_inputs(quantized, samples, {p: op.inputs[0] for p, op in q_ops.items()})
    return {pos: expected[pos] - _pre_activation_mean(g.ops[pos], q_means[pos], filters[pos].astype(np.float32))
            for pos in q_ops}


def _quantize(calibrated, model: bytes, float_output: bool) -> bytes:
    return calibrated.with_model(model).quantize(float_output=float_output)


def _with_biases(g: TfliteGraph, shifts: dict[int, np.ndarray]) -> bytes:
    """The float model of ``g`` with ``shifts`` added to the layers' biases (each bias its own buffer)."""
    from ai_edge_litert import schema_py_generated as schema

    g = TfliteGraph.read(g.to_bytes())  # a fresh copy to edit
    for pos, shift in shifts.items():
        idx = g.ops[pos].inputs[2]
        bias = g.constant(idx).astype(np.float64) + shift
        buf = schema.BufferT()
        buf.data = np.frombuffer(bias.astype(np.float32).tobytes(), np.uint8).copy()
        g.obj.buffers.append(buf)
        g.tensors[idx].buffer = len(g.obj.buffers) - 1
    return g.to_bytes()
