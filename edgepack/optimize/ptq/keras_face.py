"""The Keras face of the ptq algorithms: equalization and bias correction on a copy of the model.

TensorFlow's converter quantizes Conv2D, DepthwiseConv2D and Dense kernels per output channel
(symmetric, max|w| / 127); per-channel rounding does not change when a batch norm folded in later
scales a channel, so the rounding error measured on the layer's own kernel is the converter's.
Hard-swish written with Keras ops is fused by the converter itself (no fusion needed here).

- equalization: Conv2D/Dense (ReLU or no activation, fused or as the next layer) feeding only a
  Conv2D/Dense/DepthwiseConv2D, no batch norm between (see ``equalize.py`` for the scales);
- bias correction: every Conv2D/DepthwiseConv2D/Dense with a bias, called once (see
  ``bias_correction.py``): the mean of the layer's op run with ``W_q - W`` on its calibration
  inputs is subtracted from the bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepack.optimize.graph import copy_model, read_graph
from edgepack.optimize.ptq.bias_correction import quantization_error
from edgepack.optimize.ptq.equalize import _CLAMP
from edgepack.optimize.ptq.onnx_face import EXACT

_KERNELS = ("Conv2D", "DepthwiseConv2D", "Dense")


def _kind(layer) -> str:
    return type(layer).__name__


def _act(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _equalizable_pairs(model) -> list[tuple[Any, Any]]:
    graph = read_graph(model)
    readers: dict[Any, list] = {}
    for node in graph.nodes:
        for key in node.inputs:
            readers.setdefault(key, []).append(node)
    by_layer = {n.layer.name: n for n in graph.nodes}
    pairs = []
    for node in graph.nodes:
        layer = node.layer
        if _kind(layer) not in ("Conv2D", "Dense") or _act(layer) not in ("relu", "linear") or \
                getattr(layer, "groups", 1) != 1 or len(node.outputs) != 1:
            continue
        nxt = readers.get(node.outputs[0], [])
        if len(nxt) == 1 and _kind(nxt[0].layer) == "ReLU" and _act(layer) == "linear" \
                and not nxt[0].layer.get_config().get("max_value"):
            nxt = readers.get(nxt[0].outputs[0], [])
        if len(nxt) == 1 and _kind(nxt[0].layer) in _KERNELS and by_layer.get(nxt[0].layer.name) is nxt[0] \
                and (_kind(layer) == "Dense") == (_kind(nxt[0].layer) == "Dense") and node.outputs[0] not in graph.outputs:
            pairs.append((layer, nxt[0].layer))
    return pairs


def _equalize_pair(l1, l2) -> float:
    w1, b1 = l1.get_weights()[0], (l1.get_weights()[1] if l1.use_bias else None)
    w2 = l2.get_weights()
    k2 = w2[0]
    c = w1.shape[-1]
    r1 = np.abs(w1).reshape(-1, c).max(axis=0)
    in_axis = k2.ndim - 2 if _kind(l2) != "Dense" else 0  # HWIO / HW(C)(M): input channels; Dense: rows
    r2 = np.abs(np.moveaxis(k2, in_axis, 0)).reshape(c, -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 0), np.clip(s, *_CLAMP), 1.0)
    l1.set_weights([w1 / s] + ([b1 / s] if b1 is not None else []))
    shape = [1] * k2.ndim
    shape[in_axis] = c
    l2.set_weights([k2 * s.reshape(shape), *w2[1:]])
    return float(s.max() / s.min())


def _shift(layer, x, per_tensor: bool) -> np.ndarray:
    import tensorflow as tf

    kernel = layer.get_weights()[0]
    kind = _kind(layer)
    if kind == "DepthwiseConv2D":  # per output channel = per (input channel, multiplier)
        flat = kernel.reshape(*kernel.shape[:2], -1)
        dw = quantization_error(flat, per_tensor=per_tensor, axis=2).reshape(kernel.shape).astype(np.float32)
        s, d = layer.strides, layer.dilation_rate
        y = tf.nn.depthwise_conv2d(x, dw, strides=[1, *s, 1], padding=layer.padding.upper(), dilations=d)
    elif kind == "Conv2D":
        dw = quantization_error(kernel, per_tensor=per_tensor, axis=kernel.ndim - 1).astype(np.float32)
        y = tf.nn.convolution(x, dw, strides=layer.strides, padding=layer.padding.upper(), dilations=layer.dilation_rate)
    else:
        dw = quantization_error(kernel, per_tensor=per_tensor, axis=1).astype(np.float32)
        y = tf.tensordot(tf.convert_to_tensor(x), dw, 1)
    y = np.asarray(y, np.float64)
    return y.reshape(-1, y.shape[-1]).mean(axis=0)


def correct_biases(model, batch: list[np.ndarray], per_tensor: bool) -> dict[str, Any]:
    """Bias correction in place on ``model`` (a copy); the record."""
    from edgepack.formats.base import call_keras
    from edgepack.optimize.graph import keras_module

    layers = [la for la in model.layers if _kind(la) in _KERNELS and la.use_bias and len(la._inbound_nodes) == 1
              and getattr(la, "groups", 1) == 1 and getattr(la, "data_format", "channels_last") == "channels_last"]
    record: dict[str, Any] = {"samples": len(batch[0]), "granularity": "per-tensor" if per_tensor else "per-channel",
                              "layers": 0}
    if not layers:
        return record
    ins = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras_module(model).Model(ins, [la.input for la in layers])
    inputs = call_keras(probe, batch)
    rows = []
    for layer, x in zip(layers, inputs):
        shift = _shift(layer, np.asarray(x, np.float32), per_tensor)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, (bias - shift).astype(bias.dtype)])
        rows.append({"layer": layer.name, "max_abs_shift": float(f"{np.abs(shift).max():.4g}"),
                     "max_abs_bias": float(f"{np.abs(bias).max():.4g}")})
    rows.sort(key=lambda r: -r["max_abs_shift"])
    record.update(layers=len(rows), max_abs_shift=rows[0]["max_abs_shift"], largest=rows[:5])
    return record


def apply(model, wanted: list[str], batch: list[np.ndarray], *, per_tensor: bool = False) -> tuple[Any, dict]:
    """A rewritten copy of ``model`` (None when nothing changed) and a record per algorithm."""
    from edgepack.formats.base import call_keras

    copy, record, changed = copy_model(model), {}, False
    if "fuse" in wanted:
        record["fuse"] = {"skipped": "TensorFlow's converter fuses hard-swish written with Keras ops itself"}
    if "equalize" in wanted:
        pairs = _equalizable_pairs(copy)
        rows = [{"layer1": a.name, "layer2": b.name, "scale_ratio": round(_equalize_pair(a, b), 3)} for a, b in pairs]
        probe = [x[:4] for x in batch]
        diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(a)).max(), 1e-12))
                   for a, b in zip(call_keras(model, probe), call_keras(copy, probe)))
        record["equalize"] = {"pairs": len(rows), "layers": rows, "float_max_rel_difference": float(f"{diff:.3g}")}
        if diff > EXACT:  # not the same function: undone
            record["equalize"]["skipped"] = f"the float outputs differ by {diff:.3g} (relative) after the rewrite"
            copy = copy_model(model)
        changed |= bool(rows) and diff <= EXACT
    if "split" in wanted:
        record["split"] = {"skipped": "no Keras face yet (ONNX models only)"}
    if "learned-rounding" in wanted:
        record["learned-rounding"] = {"skipped": "no Keras face yet (ONNX models only)"}
    if "bias-correction" in wanted:
        record["bias-correction"] = correct_biases(copy, batch, per_tensor)
        changed |= record["bias-correction"]["layers"] > 0
    return (copy if changed else None), record
