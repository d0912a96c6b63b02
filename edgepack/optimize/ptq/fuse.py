"""Decomposed activations fused into the ops TFLite has fused int8 kernels for.

Exporters often write hard-swish as ``x * clip(x + 3, 0, 6) / 6`` (paddle2onnx: PP-LCNet,
PicoDet). Translated op by op, each becomes an int8 ADD, MINIMUM/MAXIMUM, MUL and MUL: three to
four extra roundings per activation, and the product ``x * clip(...)`` spans six times the range of
the output, so the negative lobe (down to -0.375) is lost on its int8 grid. An ONNX ``HardSwish``
node is translated by onnx2tf as ``x * relu6(x + 3) * (1/6)``, which TensorFlow's converter fuses
into one HARD_SWISH op with its own int8 kernel: no float op, one rounding.

The ONNX face rewrites these forms into ``HardSwish`` (opset 14; an opset-13 graph is lifted to 14,
whose changes from 13 add types and attributes with defaults that keep the old meaning):

- ``Div(Mul(x, R), 6)`` and ``Mul(Mul(x, R), 1/6)`` with ``R = clip(x + 3, 0, 6)``;
- ``Mul(x, H)`` with ``H`` a hard-sigmoid of ``x``: ``R / 6``, ``R * (1/6)`` or
  ``HardSigmoid(x, alpha=1/6, beta=0.5)``;

where the clip is ``Clip(., 0, 6)``, ``Min(Max(., 0), 6)`` or ``Max(Min(., 6), 0)``. A rewrite is
kept only when onnxruntime gives the same outputs (relative 1e-4) on the graph before and after.

Not fused, on purpose: a standalone hard-sigmoid (TFLite has no HARD_SIGMOID op; onnx2tf's
translation of ``HardSigmoid`` costs as many int8 ops as the decomposed form), SiLU ``x *
sigmoid(x)`` (TFLite has no fused SiLU: LOGISTIC and MUL are already what it runs), GELU (TFLite's
GELU needs ONNX opset 20's ``Gelu``, and lifting a graph by 7 opsets changes Split, Reduce* and
Squeeze semantics).

The Keras face is the TensorFlow converter itself: it fuses ``x * relu6(x + 3) / 6`` written with
Keras ops (measured in the tests), so a Keras model needs no rewrite here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edgepack.optimize.ptq.onnx_graph import GraphIndex, attr, drop_unused_constants, opset, remove_nodes

log = logging.getLogger(__name__)

_TOL = 1e-6


@dataclass(frozen=True)
class Match:
    x: str  # the activation's input
    last: Any  # the node whose output the fused op takes over
    nodes: tuple[Any, ...]  # every node of the decomposed form, ``last`` included


def _near(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= _TOL * max(1.0, abs(want))


def _other(node, idx: GraphIndex, want: float) -> str | None:
    """The non-constant input of a binary node whose other input is the constant ``want``."""
    a, b = node.input[0], node.input[1]
    if _near(idx.scalar(b), want) and a not in idx.constants:
        return a
    if _near(idx.scalar(a), want) and b not in idx.constants and node.op_type in ("Add", "Mul"):
        return b
    return None


def _clip_bounds(node, idx: GraphIndex) -> tuple[float | None, float | None]:
    if len(node.input) > 1 or attr(node, "min") is None:  # opset 11+: bounds are inputs ("" = none)
        lo = idx.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = idx.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return lo, hi
    return attr(node, "min"), attr(node, "max")


def _relu6_input(name: str, idx: GraphIndex) -> tuple[str, list[Any]] | None:
    """``(a, nodes)`` when ``name`` is ``min(max(a, 0), 6)`` in one of its spellings."""
    node = idx.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Clip":
        lo, hi = _clip_bounds(node, idx)
        return (node.input[0], [node]) if _near(lo, 0.0) and _near(hi, 6.0) else None
    if node.op_type in ("Min", "Max") and len(node.input) == 2:
        inner_op, outer_c, inner_c = ("Max", 6.0, 0.0) if node.op_type == "Min" else ("Min", 0.0, 6.0)
        a = _other(node, idx, outer_c)
        inner = idx.producer.get(a) if a else None
        if inner is not None and inner.op_type == inner_op and len(inner.input) == 2:
            b = _other(inner, idx, inner_c)
            if b is not None:
                return b, [inner, node]
    return None


def _relu6_plus3(name: str, idx: GraphIndex) -> tuple[str, list[Any]] | None:
    """``(x, nodes)`` when ``name`` is ``relu6(x + 3)``."""
    r = _relu6_input(name, idx)
    if r is None:
        return None
    add = idx.producer.get(r[0])
    if add is None or add.op_type != "Add":
        return None
    x = _other(add, idx, 3.0)
    return (x, [add, *r[1]]) if x is not None else None


def _hard_sigmoid(name: str, idx: GraphIndex) -> tuple[str, list[Any]] | None:
    """``(x, nodes)`` when ``name`` is ``relu6(x + 3) / 6`` or ``HardSigmoid(x, 1/6, 0.5)``."""
    node = idx.producer.get(name)
    if node is None:
        return None
    if node.op_type == "HardSigmoid":
        ok = _near(attr(node, "alpha", 0.2), 1 / 6) and _near(attr(node, "beta", 0.5), 0.5)
        return (node.input[0], [node]) if ok else None
    if node.op_type in ("Div", "Mul"):
        r = _other(node, idx, 6.0 if node.op_type == "Div" else 1 / 6)
        inner = _relu6_plus3(r, idx) if r is not None else None
        if inner is not None:
            return inner[0], [*inner[1], node]
    return None


def match_hard_swish(node, idx: GraphIndex) -> Match | None:
    if node.op_type == "Mul" and len(node.input) == 2:  # x * hard_sigmoid(x)
        for x, h in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            hs = _hard_sigmoid(h, idx)
            if hs is not None and hs[0] == x:
                return Match(x, node, (*hs[1], node))
    if node.op_type in ("Div", "Mul") and len(node.input) == 2:  # (x * relu6(x + 3)) / 6
        m = _other(node, idx, 6.0 if node.op_type == "Div" else 1 / 6)
        prod = idx.producer.get(m) if m is not None else None
        if prod is not None and prod.op_type == "Mul" and len(prod.input) == 2:
            for x, r in ((prod.input[0], prod.input[1]), (prod.input[1], prod.input[0])):
                found = _relu6_plus3(r, idx)
                if found is not None and found[0] == x:
                    return Match(x, node, (*found[1], prod, node))
    return None


def find_hard_swishes(graph) -> list[Match]:
    """Every decomposed hard-swish whose inner tensors nothing else reads, in graph order."""
    idx = GraphIndex.build(graph)
    found, used = [], set()
    for node in graph.node:
        m = match_hard_swish(node, idx)
        if m is None or any(id(n) in used for n in m.nodes):
            continue
        members = {id(n) for n in m.nodes}
        inner = [o for n in m.nodes if n is not m.last for o in n.output]
        if all(idx.private(t, members) for t in inner):
            found.append(m)
            used |= members
    return found


def fuse_hard_swish(proto) -> tuple[Any, dict[str, Any]]:
    """A copy of ``proto`` with decomposed hard-swishes replaced by ``HardSwish`` nodes, and the record."""
    import onnx
    from onnx import helper

    version = opset(proto)
    record: dict[str, Any] = {"fused": 0, "op": "HardSwish", "opset": version}
    if not find_hard_swishes(proto.graph):
        return proto, record
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    matches = find_hard_swishes(out.graph)
    record["fused"] = len(matches)
    if version < 13:
        record.update(fused=0, skipped=f"opset {version}: HardSwish needs 14, and lifting from below 13 changes "
                                      "other ops' semantics", found=len(matches))
        return proto, record
    if version == 13:
        for o in out.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 14
        record["opset"] = 14
    doomed = []
    for m in matches:
        fused = helper.make_node("HardSwish", [m.x], [m.last.output[0]], name=f"{m.last.name or m.x}_hardswish")
        doomed.extend(n for n in m.nodes if n is not m.last)
        m.last.CopyFrom(fused)
    remove_nodes(out.graph, doomed)
    drop_unused_constants(out.graph)
    record["nodes_removed"] = len(doomed)
    record["outputs"] = [m.last.output[0] for m in matches][:5] + (["..."] if len(matches) > 5 else [])
    return out, record
