"""Channel-group splitting: per-channel activation ranges for the input of a depthwise convolution.

TFLite quantizes an activation tensor with one scale (per tensor). Before a depthwise convolution
that is the weak point of mobile nets: ``conv1 -> act -> depthwise conv2`` where the channels of
the tensor between them span very different ranges (PP-LCNet's first block: 0.09 in two channels
whose kernels are 15x the others', 40 in the widest), the small channels are lost on the wide
channels' int8 grid. Cross-layer equalization would rescale them, but only through positively
homogeneous activations; hard-swish is not (``hswish(z / s) != hswish(z) / s`` on its bend).

A depthwise convolution treats every channel on its own, so it can be cut into channel groups
exactly: the chain becomes, per group ``g``, ``conv1[g] -> act -> depthwise conv2[g]``, and a
``Concat`` joins the groups' outputs. Each group's tensors (conv1's output and the activation's)
get their own int8 scale; float results are unchanged (same weights, same sums, regrouped). The
concatenation has the groups' channels in group order; the first convolution that reads it (through
elementwise activations) gets its input channels permuted to match, or, when none does, a
``Gather`` on the channel axis puts them back (an int8 op in TFLite).

Groups are chosen from the channels' ranges on calibration data: channels sorted by range, cut into
contiguous runs minimizing the int8 rounding noise that reaches the depthwise output,
``sum_g step_g^2 * sum_{i in g} |k_i|^2`` (``step_g``: the group's int8 step on conv1's output and on
the activation's; ``k_i``: channel i's depthwise kernel). A chain is split only when that noise
falls at least ``MIN_GAIN_DB``; into at most ``MAX_GROUPS`` groups, each further group kept only when
it gains ``STEP_GAIN_DB`` more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.optimize.ptq.batchnorm import fold_batchnorms
from edgepack.optimize.ptq.onnx_graph import GraphIndex, attr, drop_unused_constants, session
from edgepack.optimize.ptq.split_rewrite import ELEMENTWISE, rewrite_chain

log = logging.getLogger(__name__)

MAX_GROUPS = 4
MIN_GAIN_DB = 3.0  # a chain is split only when the modelled noise at the depthwise output falls this much
STEP_GAIN_DB = 1.0  # each group beyond two must gain this much more
SAMPLES = 8  # calibration samples whose per-channel ranges choose the groups


@dataclass(frozen=True)
class Chain:
    conv1: Any
    act: Any | None
    conv2: Any  # depthwise

    @property
    def tensors(self) -> tuple[str, ...]:
        """The tensors whose per-tensor int8 grid the split refines (conv1's output, the activation's)."""
        return (self.conv1.output[0],) + ((self.act.output[0],) if self.act is not None else ())


def find_chains(graph) -> list[Chain]:
    """``Conv (group 1) -> [elementwise activation] -> depthwise Conv`` with private tensors between."""
    idx = GraphIndex.build(graph)
    found = []
    for conv1 in graph.node:
        w1 = idx.value(conv1.input[1]) if conv1.op_type == "Conv" else None
        if w1 is None or attr(conv1, "group", 1) != 1 or (len(conv1.input) > 2 and conv1.input[2]
                                                           and idx.value(conv1.input[2]) is None):
            continue
        act, nxt = None, idx.only_consumer(conv1.output[0])
        if nxt is not None and nxt.op_type in ELEMENTWISE and all(i in idx.constants for i in nxt.input[1:] if i):
            act, nxt = nxt, idx.only_consumer(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv":
            continue
        w2 = idx.value(nxt.input[1])
        c = w1.shape[0]
        if (w2 is None or attr(nxt, "group", 1) != c or w2.shape[:2] != (c, 1)
                or (len(nxt.input) > 2 and nxt.input[2] and idx.value(nxt.input[2]) is None)):
            continue
        found.append(Chain(conv1, act, nxt))
    return found


def channel_ranges(proto, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per tensor, ``[2, C]``: each channel's min and max (axis 1) over the samples."""
    import onnx
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    sess = session(probe)
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, arr in zip(tensors, sess.run(None, feed)):
            a = np.moveaxis(np.asarray(arr), 1, 0).reshape(arr.shape[1], -1)
            now = np.stack([a.min(axis=1), a.max(axis=1)])
            out[name] = now if name not in out else np.stack([np.minimum(out[name][0], now[0]),
                                                                np.maximum(out[name][1], now[1])])
    return out


def _group_costs(ranges: list[np.ndarray], weight2: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``cost[a, b]``: channels ``order[a:b]`` as one group, ``sum over tensors of step^2 * sum |k|^2``
    (the step of a per-tensor int8 grid over those channels, zero always on the grid); inf where b <= a."""
    c = len(order)
    cost = np.full((c + 1, c + 1), np.inf)
    w = weight2[order].astype(np.float64)
    for a in range(c):
        step2 = sum(((np.maximum.accumulate(np.maximum(r[1][order[a:]], 0.0))
                      - np.minimum.accumulate(np.minimum(r[0][order[a:]], 0.0))) / 255.0) ** 2 for r in ranges)
        cost[a, a + 1:] = step2 * np.cumsum(w[a:])
    return cost


def choose_groups(ranges: list[np.ndarray], weight2: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Channel groups (index arrays, widest channels first) and the modelled noise gain in dB.

    ``ranges``: ``[2, C]`` per refined tensor; ``weight2``: each channel's squared kernel norm."""
    c = len(weight2)
    width = sum(np.maximum(r[1], 0) - np.minimum(r[0], 0) for r in ranges)
    order = np.argsort(-width, kind="stable")
    cost = _group_costs(ranges, weight2, order)
    # best[g, b]: least cost of order[:b] in g groups; cut[g, b]: where its last group starts
    best = np.full((MAX_GROUPS + 1, c + 1), np.inf)
    cut = np.zeros((MAX_GROUPS + 1, c + 1), int)
    best[0, 0] = 0.0
    for g in range(1, MAX_GROUPS + 1):
        total = best[g - 1][:, None] + cost  # [a, b]
        cut[g] = np.argmin(total, axis=0)
        best[g] = total[cut[g], np.arange(c + 1)]
    chosen = 1
    for g in range(2, min(MAX_GROUPS, c) + 1):
        need = MIN_GAIN_DB if chosen == 1 else STEP_GAIN_DB
        if 10 * np.log10(max(best[chosen, c], 1e-30) / max(best[g, c], 1e-30)) >= need:
            chosen = g
    bounds, b = [], c
    for g in range(chosen, 0, -1):
        bounds.append((cut[g, b], b))
        b = cut[g, b]
    groups = [np.sort(order[a:b]) for a, b in reversed(bounds)]
    return groups, 10 * float(np.log10(max(best[1, c], 1e-30) / max(best[chosen, c], 1e-30)))


def split_onnx(proto, feeds: list[dict[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """A copy of ``proto`` with imbalanced depthwise chains cut into channel groups, and the record."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    fold_batchnorms(out.graph)
    chains = find_chains(out.graph)
    record: dict[str, Any] = {"chains": len(chains), "split": 0, "layers": []}
    if not chains:
        return proto, record
    ranges = channel_ranges(out, [t for ch in chains for t in ch.tensors], feeds)
    for key in [ch.conv2.output[0] for ch in chains]:
        # each rewrite rebuilds the node list: find the chain again on the current graph
        ch = next(c for c in find_chains(out.graph) if c.conv2.output[0] == key)
        idx = GraphIndex.build(out.graph)
        w2 = idx.value(ch.conv2.input[1]).astype(np.float64)
        groups, gain = choose_groups([ranges[t] for t in ch.tensors], (w2.reshape(len(w2), -1) ** 2).sum(axis=1))
        if len(groups) < 2:
            continue
        how = rewrite_chain(out.graph, idx, ch, groups)
        record["split"] += 1
        record["layers"].append({"conv1": ch.conv1.name, "activation": ch.act.op_type if ch.act is not None else None,
                                 "depthwise": ch.conv2.name, "groups": [len(g) for g in groups],
                                 "modelled_gain_db": round(gain, 1), "order": how})
    if not record["split"]:
        return proto, record
    drop_unused_constants(out.graph)
    return out, record
