"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), on the ONNX graph.

For two convolutions ``conv2(act(conv1(x)))`` with ``act`` positively homogeneous (ReLU, LeakyReLU,
PReLU, none): ``act(z / s) = act(z) / s`` for ``s > 0``, so dividing output channel ``i`` of conv1
(weights and bias) by ``s_i`` and multiplying input channel ``i`` of conv2 by ``s_i`` leaves the
function unchanged. With ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: conv1's largest weight of output
channel ``i``, ``r2_i``: conv2's largest weight reading channel ``i``) both ranges become
``sqrt(r1_i r2_i)``: a channel whose weights (and activations) are 100x its neighbours' no longer
sets the int8 grid of the activation tensor between the two layers, which TFLite quantizes per tensor.

Batch norms are folded into their convolutions first (``batchnorm.py``): the converter quantizes
the folded weights. Not equalized, and counted in the record: pairs through an activation that is
not positively homogeneous (hard-swish, SiLU, sigmoid, ReLU6/Clip: ``relu6(z / s) != relu6(z) / s``),
and pairs where the tensor between them has other readers. Bias absorption is not done: with zero
padding it is not exact at the borders.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepack.optimize.ptq.batchnorm import fold_batchnorms
from edgepack.optimize.ptq.onnx_graph import GraphIndex, attr, drop_unused_constants, set_initializer, unique_name

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
_CLAMP = (1e-3, 1e3)  # bounds on s: a dead channel (all-zero weights) is left alone


def _pairs(graph, also: tuple[str, ...] = ()) -> tuple[list[tuple[Any, Any | None, Any]], dict[str, int]]:
    """(conv1, activation or None, conv2) chains, and the pairs skipped by the activation that blocks them;
    ``also``: activations let through although not homogeneous."""
    idx = GraphIndex.build(graph)
    pairs, blocked = [], {}
    for conv1 in graph.node:
        if conv1.op_type != "Conv" or idx.value(conv1.input[1]) is None:
            continue
        nxt = idx.only_consumer(conv1.output[0])
        act = None
        if nxt is not None and nxt.op_type in (*HOMOGENEOUS, *also):
            if nxt.op_type == "PRelu" and idx.value(nxt.input[1]) is None:
                continue
            act, nxt = nxt, idx.only_consumer(nxt.output[0])
        elif nxt is not None and nxt.op_type != "Conv":
            follower = idx.only_consumer(nxt.output[0]) if nxt.output else None
            if follower is not None and follower.op_type == "Conv":
                blocked[nxt.op_type] = blocked.get(nxt.op_type, 0) + 1
            continue
        if nxt is None or nxt.op_type != "Conv" or idx.value(nxt.input[1]) is None:
            continue
        pairs.append((conv1, act, nxt))
    return pairs, blocked


def _scales(w1: np.ndarray, w2: np.ndarray, group2: int, shrink_only: bool = False) -> np.ndarray | None:
    c = w1.shape[0]
    r1 = np.abs(w1).reshape(c, -1).max(axis=1)
    if group2 == 1 and w2.shape[1] == c:
        r2 = np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(c, -1).max(axis=1)
    elif group2 == c and w2.shape[0] == c and w2.shape[1] == 1:  # depthwise
        r2 = np.abs(w2).reshape(c, -1).max(axis=1)
    else:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 0), np.clip(s, *_CLAMP), 1.0)
    return np.maximum(s, 1.0) if shrink_only else s


def _equalize_pair(graph, idx: GraphIndex, conv1, act, conv2) -> float | None:
    """Scale one pair in place; the largest channel-range ratio it removed (max s / min s)."""
    w1, w2 = idx.value(conv1.input[1]), idx.value(conv2.input[1])
    if attr(conv1, "group", 1) != 1 and attr(conv1, "group", 1) != w1.shape[0]:
        return None
    s = _scales(w1, w2, attr(conv2, "group", 1), shrink_only=act is not None and act.op_type not in HOMOGENEOUS)
    if s is None:
        return None
    b1 = idx.value(conv1.input[2]) if len(conv1.input) > 2 and conv1.input[2] else None
    shape1 = (-1, *[1] * (w1.ndim - 1))
    names: dict[str, str] = {}
    for role, arr in (("w1", w1 / s.reshape(shape1)), ("b1", None if b1 is None else b1 / s)):
        if arr is not None:
            names[role] = unique_name(idx, f"{conv1.name or 'conv'}_{role}_equalized")
            set_initializer(graph, names[role], arr.astype(np.float32))
            idx.constants[names[role]] = None
    w2_scaled = w2 * (s.reshape(1, -1, *[1] * (w2.ndim - 2)) if w2.shape[1] == len(s) and attr(conv2, "group", 1) == 1
                      else s.reshape(shape1))
    names["w2"] = unique_name(idx, f"{conv2.name or 'conv'}_w_equalized")
    set_initializer(graph, names["w2"], w2_scaled.astype(np.float32))
    idx.constants[names["w2"]] = None
    conv1.input[1] = names["w1"]
    if "b1" in names:
        conv1.input[2] = names["b1"]
    conv2.input[1] = names["w2"]
    return float(s.max() / s.min())


def equalize_onnx(proto, through: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """``through``: non-homogeneous activations to equalize across all the same (``("HardSwish",)``),
    shrinking only (s >= 1): the function changes where the large channels pass the activation's bend."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    folded = fold_batchnorms(out.graph)
    pairs, blocked = _pairs(out.graph, through)
    record: dict[str, Any] = {"batchnorms_folded": folded, "pairs": 0, "layers": [],
                              "not_homogeneous": blocked}
    for conv1, act, conv2 in pairs:  # a conv in two pairs (a chain): its input and output scalings compose
        idx = GraphIndex.build(out.graph)
        ratio = _equalize_pair(out.graph, idx, conv1, act, conv2)
        if ratio is None:
            continue
        record["pairs"] += 1
        record["layers"].append({"conv1": conv1.name, "activation": act.op_type if act is not None else None,
                                 "conv2": conv2.name, "scale_ratio": round(ratio, 3)})
    if not record["pairs"]:  # folding alone changes nothing the converter would not do itself
        return proto, record
    drop_unused_constants(out.graph)
    return out, record
