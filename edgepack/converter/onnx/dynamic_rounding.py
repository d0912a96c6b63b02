"""The run-time 8-bit rounding of dynamically quantized ONNX models, kept in float ops.

onnxruntime's ``quantize_dynamic`` leaves ``DynamicQuantizeLinear`` in front of every ConvInteger /
MatMulInteger: each call rounds the activation to uint8 with a scale from its own range,

    scale = (max(0, max x) - min(0, min x)) / 255,   zp = saturate(round(-min(0, min x) / scale)),
    q = saturate(round_half_even(x / scale) + zp),

and the integer op sums ``(q - zp) * (w - w_zp)`` exactly in int32. Dropping the rounding (the plain
rewrite in :mod:`.dequantize`) moves the outputs by about 30 dB; keeping it makes the float graph read
like onnxruntime on the original. Every step is a float op TFLite has (ReduceMin/Max, Min, Max, Sub,
Div, Round, Add, Clip, Conv, MatMul) and every value it rounds or sums is an integer held exactly in
float32 (below 2**24), so the float graph rounds where the original rounds.

``DynamicQuantizeLSTM`` (onnxruntime's contrib kernel) quantizes the same way inside: its input X once
per call (the whole sequence), and the hidden state at every step of each direction, before the
weight products; it becomes an unrolled cell (:mod:`.lstm_rounding`) doing the same.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_TINY = np.float32(np.finfo(np.float32).tiny)  # an all-zero tensor: onnxruntime's scale 1 gives q = zp = 0 too


class NodeSink:
    """New nodes and constants with fresh names under ``prefix``."""

    def __init__(self, g, prefix: str) -> None:
        self.g, self.prefix, self.nodes, self.count = g, prefix, [], 0
        self.opset = next((o.version for o in g.proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str, value) -> str:
        full = f"{self.prefix}{name}"
        return full if full in self.g.consts else self.g.add_const(full, np.asarray(value))

    def op(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs) -> str:
        from onnx import helper

        self.count += 1
        outs = outputs or [f"{self.prefix}{name}"]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{self.prefix}{name}#{self.count}", **attrs))
        return outs[0]


def quantize_params(s: NodeSink, x: str, tag: str, outputs: tuple[str, str] | None = None) -> tuple[str, str, str]:
    """(scale, the scale divisions use, zero point) of ``x`` as DynamicQuantizeLinear computes them."""
    zero, qmax = s.const("zero", np.float32(0)), s.const("qmax", np.float32(255))
    lo = s.op("Min", [s.op("ReduceMin", [x], f"{tag}_min", keepdims=0), zero], f"{tag}_min0")
    hi = s.op("Max", [s.op("ReduceMax", [x], f"{tag}_max", keepdims=0), zero], f"{tag}_max0")
    span = s.op("Sub", [hi, lo], f"{tag}_span")
    # 255 that depends on the data: TFLite's converter turns a division by a constant into a product with
    # its reciprocal, one ulp off the quotient now and then, and an ulp of scale flips roundings downstream
    # (max(min(span, 255), 255) stays a division; span * 0 + 255 is folded back to the constant)
    divisor = s.op("Max", [s.op("Min", [span, qmax], f"{tag}_span255"), qmax], f"{tag}_qmax")
    scale = s.op("Div", [span, divisor], f"{tag}_scale", outputs=[outputs[0]] if outputs else None)
    safe = s.op("Max", [scale, s.const("tiny", _TINY)], f"{tag}_safe_scale")
    zp = s.op("Div", [s.op("Neg", [lo], f"{tag}_neg_min"), safe], f"{tag}_zp_real")
    zp = s.op("Clip", [s.op("Round", [zp], f"{tag}_zp_round"), zero, qmax], f"{tag}_zp",
              outputs=[outputs[1]] if outputs else None)
    return scale, safe, zp


def quantized(s: NodeSink, x: str, safe: str, zp: str, tag: str, output: str | None = None) -> str:
    """``saturate(round(x / scale) + zp)`` as a float tensor of integers 0..255."""
    q = s.op("Add", [s.op("Round", [s.op("Div", [x, safe], f"{tag}_div")], f"{tag}_round"), zp], f"{tag}_shift")
    return s.op("Clip", [q, s.const("zero", np.float32(0)), s.const("qmax", np.float32(255))], f"{tag}_q",
                outputs=[output] if output else None)


def centred(s: NodeSink, x: str, tag: str) -> tuple[str, str]:
    """(``q - zp``, scale): ``x`` rounded to its run-time 8 bits, as float integers -255..255."""
    scale, safe, zp = quantize_params(s, x, tag)
    return s.op("Sub", [quantized(s, x, safe, zp, tag), zp], f"{tag}_centred"), scale


def integer_product(s: NodeSink, x: str, w_int: np.ndarray, w_scale: np.ndarray, tag: str, weights: str) -> str:
    """``x`` rounded at run time times the integer weights (one constant per ``weights`` name, shared by
    every step), summed exactly (float integers below 2**24), then scaled once by ``x_scale * w_scale``:
    an 8-bit GEMM with a float output, as onnxruntime's."""
    q, scale = centred(s, x, tag)
    acc = s.op("MatMul", [q, s.const(weights, w_int.astype(np.float32))], f"{tag}_acc")
    multiplier = s.op("Mul", [scale, s.const(f"{weights}_scale", np.asarray(w_scale, np.float32))], f"{tag}_multiplier")
    return s.op("Mul", [acc, multiplier], f"{tag}_product")


def _integer_inputs_only(g, node) -> bool:
    """Every reader of the quantized value and zero point is an integer op this module rewrites."""
    readers = [n for o in node.output[::2] for n in g.users.get(o, [])]
    return bool(readers) and all(n.op_type in ("ConvInteger", "MatMulInteger") and n.input[1] in g.consts
                                 for n in readers)


def emulate_dynamic_quantize(g, record) -> None:
    """DynamicQuantizeLinear -> float ops with the same three outputs (q and zp as float integers)."""
    for node in list(g.graph.node):
        if node.op_type != "DynamicQuantizeLinear" or not _integer_inputs_only(g, node):
            continue
        s = NodeSink(g, f"{node.name or node.output[0]}/rounding/")
        _, safe, zp = quantize_params(s, node.input[0], "x", outputs=(node.output[1], node.output[2]))
        quantized(s, node.input[0], safe, zp, "x", output=node.output[0])
        g.graph.node.remove(node)
        g.graph.node.extend(s.nodes)
        record.rounding_emulated += 1


def emulate_integer_ops(g, record) -> None:
    """ConvInteger/MatMulInteger(q, w, zp, w_zp) -> Conv/MatMul(q - zp, w - w_zp) on float integers; the
    integer bias path around it (Cast to int32, Cast back to float) stays in float."""
    from onnx import TensorProto, helper

    for node in list(g.graph.node):
        if node.op_type not in ("ConvInteger", "MatMulInteger") or node.input[1] not in g.consts:
            continue
        producer = g.producer.get(node.input[0])
        if producer is not None and producer.op_type == "DynamicQuantizeLinear":
            continue  # not emulated (another reader): the plain rewrite takes it
        ins = list(node.input) + [""] * (4 - len(node.input))
        s = NodeSink(g, f"{node.name or node.output[0]}/integer/")
        w = g.consts[ins[1]].astype(np.float32)
        if ins[3]:
            wzp = np.asarray(g.consts[ins[3]], np.float32)
            w = w - (wzp.reshape(-1, *[1] * (w.ndim - 1)) if node.op_type == "ConvInteger" and wzp.size > 1 else wzp)
        x = s.op("Sub", [ins[0], ins[2]], "centred") if ins[2] else ins[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        s.op("Conv" if node.op_type == "ConvInteger" else "MatMul", [x, s.const("weight", w.astype(np.float32))],
             "float", outputs=[node.output[0]], **attrs)
        for cast in _int32_casts_after(g, node.output[0]):
            for a in cast.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT
        g.graph.node.remove(node)
        g.graph.node.extend(s.nodes)
        record.integer_ops += 1


def _int32_casts_after(g, name: str) -> list[Any]:
    """The Casts to int32 on the bias path joining ``name`` (Add <- Reshape <- Cast <- Floor)."""
    from onnx import TensorProto

    found = []
    for add in g.users.get(name, []):
        if add.op_type != "Add":
            continue
        other, seen = next((i for i in add.input if i != name), ""), 0
        while other and seen < 6 and other not in g.consts:
            p = g.producer.get(other)
            if p is None:
                break
            if p.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.INT32 for a in p.attribute):
                found.append(p)
                break
            other, seen = (p.input[0] if p.input else ""), seen + 1
    return found


def toposort(graph) -> None:
    """The top graph's nodes in an order where every input is produced first (rewrites append); an
    ``If``/``Loop`` waits for the outer values its branches read too, not only for its condition."""
    known = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    needs = {id(n): [*n.input, *_outer_names(n)] for n in pending}
    while pending:
        ready = [n for n in pending if all(i in known for i in needs[id(n)])]
        if not ready:  # a cycle or an input from outside: keep the rest as they were
            ordered.extend(pending)
            break
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
        ordered.extend(ready)
        known.update(o for n in ready for o in n.output)
    del graph.node[:]
    graph.node.extend(ordered)


def _outer_names(node) -> set[str]:
    """Names a node's subgraphs (If branches, Loop bodies, nested too) read from the enclosing scope."""
    from onnx import AttributeProto

    graphs = [a.g for a in node.attribute if a.type == AttributeProto.GRAPH]
    graphs += [g for a in node.attribute if a.type == AttributeProto.GRAPHS for g in a.graphs]
    outer: set[str] = set()
    for g in graphs:
        local = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
        local |= {o for n in g.node for o in n.output}
        for n in g.node:
            outer |= {i for i in n.input if i not in local} | (_outer_names(n) - local)
    return outer
