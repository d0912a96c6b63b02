"""Already-quantized ONNX models back to float ops with the same effective weights, before translation.

- **QDQ** (onnxruntime's ``quantize_static``, NNCF, AIMET): a ``DequantizeLinear`` of a stored weight
  becomes the float weight ``(q - zero_point) * scale``; a ``QuantizeLinear`` -> ``DequantizeLinear``
  pair on an activation is removed and its range, ``scale * (qmin - zp) .. scale * (qmax - zp)``, is
  kept: int8 conversion quantizes that tensor with it (:func:`translate` maps it to the TFLite tensor).
- **Dynamic quantization** (onnxruntime's ``quantize_dynamic``): ``DynamicQuantizeLinear`` ->
  ``ConvInteger``/``MatMulInteger`` [-> integer bias] -> ``Cast`` -> ``Mul(x_scale * w_scale)`` becomes
  ``Conv``/``MatMul`` with the weight ``(w - w_zp) * w_scale`` and the float bias; ``DynamicQuantizeLSTM``
  becomes an ``LSTM`` with its dequantized weights. The activations' run-time 8-bit rounding goes.

- **QOperator** (``QLinearConv``, ``QLinearMatMul``, onnxruntime's ``QLinearAdd``...): each op becomes
  DequantizeLinear -> float op -> QuantizeLinear, then is handled as QDQ.

What is not rewritten (other patterns) stays and is refused by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class DequantizeRecord:
    weights: int = 0  # DequantizeLinear of stored weights folded
    qdq_pairs: int = 0  # activation QuantizeLinear -> DequantizeLinear pairs removed
    integer_ops: int = 0  # ConvInteger / MatMulInteger chains rewritten
    lstms: int = 0  # DynamicQuantizeLSTM rewritten
    qoperators: int = 0  # QLinear* ops turned into DequantizeLinear -> float op -> QuantizeLinear
    rounding_emulated: int = 0  # DynamicQuantizeLinear kept as float rounding ops (:mod:`.dynamic_rounding`)
    activation_rounding: str = "removed"  # or "emulated": the run-time 8-bit rounding of dynamic models
    ranges: dict[str, list[float]] = field(default_factory=dict)  # activation -> [min, max] from the QDQ pairs
    grids: list = field(default_factory=list)  # weight_grids.SourceGrid of every weight folded to float

    def add_grid(self, name: str, q, zero_point, scale, *, out_axis: int, quant_axis: int | None = None) -> None:
        from edgepack.converter.weight_grids import source_grid

        grid = source_grid(name, q, zero_point, scale, out_axis=out_axis, quant_axis=quant_axis)
        if grid is not None:
            self.grids.append(grid)

    @property
    def changed(self) -> bool:
        return bool(self.weights or self.qdq_pairs or self.integer_ops or self.lstms or self.qoperators)

    def to_dict(self) -> dict[str, Any]:
        return {"qoperators_rewritten": self.qoperators, "dequantized_weights": self.weights,
                "qdq_pairs_removed": self.qdq_pairs,
                "integer_ops_rewritten": self.integer_ops, "lstms_rewritten": self.lstms,
                "activation_ranges": len(self.ranges),
                **({"activation_rounding": self.activation_rounding, "rounding_emulated": self.rounding_emulated}
                   if self.integer_ops or self.lstms else {})}


class _Graph:
    """The top graph's nodes, constants, producers and consumers, rebuilt after a rewrite."""

    def __init__(self, proto) -> None:
        from onnx import numpy_helper

        self.proto, self.graph = proto, proto.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for n in self.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.users: dict[str, list[Any]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)

    def only_user(self, name: str, op: str) -> Any | None:
        users = self.users.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def add_const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = value
        return name


def _dequantized(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale) if zp is None else np.asarray(zp, np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per axis
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


def _qrange(zp: np.ndarray | None) -> tuple[int, int]:
    kind = np.dtype(zp.dtype) if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(kind) if kind.kind in "iu" else np.iinfo(np.uint8)
    return int(info.min), int(info.max)


def _attr(node, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _rename_input(g: _Graph, old: str, new: str) -> None:
    for n in g.users.get(old, []):
        n.input[:] = [new if i == old else i for i in n.input]
    for out in g.graph.output:
        if out.name == old:  # a graph output keeps its name: an Identity gives it
            from onnx import helper

            g.graph.node.append(helper.make_node("Identity", [new], [old], name=f"{old}/dequantized"))


# QOperator ops (onnxruntime quantize_static's QOperator format) -> (float op, attributes kept, positions of
# the quantized inputs' (value, scale, zero point) triples, position of the output's (scale, zero point))
_QOPS = {
    "QLinearConv": ("Conv", ((0, 1, 2), (3, 4, 5)), 6),
    "QLinearMatMul": ("MatMul", ((0, 1, 2), (3, 4, 5)), 6),
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), 6),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), 6),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", ((0, 1, 2),), 3),
    "QLinearSigmoid": ("Sigmoid", ((0, 1, 2),), 3),
    "QLinearLeakyRelu": ("LeakyRelu", ((0, 1, 2),), 3),
}


def qoperator_to_qdq(g: _Graph, record: DequantizeRecord) -> None:
    """Each QLinear* op -> DequantizeLinear of its inputs, the float op, QuantizeLinear of its output: the
    QDQ form, which the steps below fold (weights) and remove with their ranges kept (activations).
    A QLinearConv's int32 bias becomes the float bias ``B * x_scale * w_scale``."""
    from onnx import helper

    for node in list(g.graph.node):
        spec = _QOPS.get(node.op_type)
        if spec is None or _attr(node, "channels_last", 0):
            continue
        op, triples, out_at = spec
        ins = list(node.input)
        name = node.name or node.output[0]
        new = []
        floats = []
        for k, (v, s, z) in enumerate(triples):
            f = f"{name}/in{k}_float"
            new.append(helper.make_node("DequantizeLinear", [ins[v], ins[s], ins[z]], [f], name=f,
                                        **({"axis": 0} if op == "Conv" and k == 1 else
                                           {"axis": 1} if op == "MatMul" and k == 1 else {})))
            floats.append(f)
        if op == "Conv" and len(ins) > 8 and ins[8]:
            if not all(i in g.consts for i in (ins[1], ins[4], ins[8])):
                continue
            scale = np.asarray(g.consts[ins[1]], np.float32) * np.asarray(g.consts[ins[4]], np.float32)
            floats.append(g.add_const(f"{name}/bias_float", (g.consts[ins[8]].astype(np.float32) * scale)
                                      .astype(np.float32).reshape(-1)))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "channels_last"}
        y = f"{name}/out_float"
        new.append(helper.make_node(op, floats, [y], name=f"{name}/float", **attrs))
        new.append(helper.make_node("QuantizeLinear", [y, ins[out_at], ins[out_at + 1]], [node.output[0]],
                                    name=f"{name}/quantize"))
        position = list(g.graph.node).index(node)
        g.graph.node.remove(node)
        for k, n in enumerate(new):
            g.graph.node.insert(position + k, n)
        record.qoperators += 1


def fold_weight_dequantize(g: _Graph, record: DequantizeRecord) -> None:
    """DequantizeLinear(stored weight) -> the float weight itself."""
    for node in list(g.graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in g.consts or node.input[1] not in g.consts:
            continue
        zp = g.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        value = _dequantized(g.consts[node.input[0]], g.consts[node.input[1]], zp, _attr(node, "axis", 1))
        g.add_const(f"{node.output[0]}/float", value)
        out_axis = _output_channel_axis(g, node.output[0], value.ndim)
        if out_axis is not None:
            record.add_grid(node.output[0], g.consts[node.input[0]], zp, g.consts[node.input[1]], out_axis=out_axis,
                            quant_axis=_attr(node, "axis", 1))
        _rename_input(g, node.output[0], f"{node.output[0]}/float")
        g.graph.node.remove(node)
        record.weights += 1


def _output_channel_axis(g: _Graph, name: str, ndim: int) -> int | None:
    """The output-channel axis of a weight every reader takes as its weight (Conv, ConvTranspose,
    MatMul, Gemm), else None."""
    axes = set()
    for n in g.users.get(name, []):
        if len(n.input) < 2 or n.input[1] != name or name in n.input[:1]:
            return None
        axes.add({"Conv": 0, "ConvTranspose": 1, "MatMul": ndim - 1}.get(n.op_type) if n.op_type != "Gemm"
                 else (0 if _attr(n, "transB", 0) else 1))
    return axes.pop() if len(axes) == 1 and None not in axes else None


_NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Sqrt", "Exp", "Clip", "HardSigmoid", "Softplus"}


def _may_be_negative(g: _Graph, name: str) -> bool:
    producer = g.producer.get(name)
    return producer is not None and producer.op_type not in _NON_NEGATIVE and name not in g.consts


def remove_activation_qdq(g: _Graph, record: DequantizeRecord) -> None:
    """QuantizeLinear(a) -> DequantizeLinear pairs: consumers read ``a``; its range is kept."""
    for q in list(g.graph.node):
        if q.op_type != "QuantizeLinear" or q.input[1] not in g.consts:
            continue
        dqs = g.users.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        zp = g.consts.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        scale = np.asarray(g.consts[q.input[1]], np.float64).reshape(-1)
        z = np.asarray(zp if zp is not None else 0, np.float64).reshape(-1)
        lo, hi = _qrange(zp)
        source = q.input[0]
        if scale.size == 1 and scale[0] * (lo - z[0]) >= 0 and _may_be_negative(g, source):
            # a range that starts at 0 is a ReLU the quantizer fused into the producer: it stays
            from onnx import helper

            relu = f"{source}/fused_relu"
            g.graph.node.insert(list(g.graph.node).index(q), helper.make_node("Relu", [source], [relu], name=relu))
            source = relu
        if scale.size == 1:
            record.ranges[source] = [float(scale[0] * (lo - z[0])), float(scale[0] * (hi - z[0]))]
        for d in dqs:
            _rename_input(g, d.output[0], source)
            g.graph.node.remove(d)
        g.graph.node.remove(q)
        record.qdq_pairs += 1


def rewrite_integer_ops(g: _Graph, record: DequantizeRecord) -> None:
    """onnxruntime's dynamic pattern: DynamicQuantizeLinear(x) -> ConvInteger/MatMulInteger(xq, wq, xzp,
    wzp) [-> Add(integer bias)] -> Cast -> Mul(x_scale * w_scale) becomes Conv/MatMul(x, w_float[, b])."""
    from onnx import helper

    for node in list(g.graph.node):
        if node.op_type not in ("ConvInteger", "MatMulInteger") or node.input[1] not in g.consts:
            continue
        dql = g.producer.get(node.input[0])
        if dql is None or dql.op_type != "DynamicQuantizeLinear":
            continue
        chain = _integer_chain(g, node)
        if chain is None:
            continue
        add, cast, mul, w_scale, bias = chain
        wzp = g.consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axis = 0 if node.op_type == "ConvInteger" else 1
        weight = _dequantized(g.consts[node.input[1]], w_scale, wzp, axis)
        name = node.name or node.output[0]
        w = g.add_const(f"{name}/weight_float", weight)
        record.add_grid(w, g.consts[node.input[1]], wzp, w_scale, out_axis=axis, quant_axis=axis)
        inputs = [dql.input[0], w]
        if node.op_type == "ConvInteger":
            if bias is not None:
                inputs.append(g.add_const(f"{name}/bias_float", bias.astype(np.float32).reshape(-1)))
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            new = helper.make_node("Conv", inputs, [mul.output[0]], name=f"{name}/float", **attrs)
        else:
            new = helper.make_node("MatMul", inputs, [mul.output[0]], name=f"{name}/float")
        position = list(g.graph.node).index(mul)
        for old in (node, add, cast, mul):
            if old is not None:
                g.graph.node.remove(old)
        g.graph.node.insert(position - sum(1 for o in (node, add, cast) if o is not None), new)
        record.integer_ops += 1


def _integer_chain(g: _Graph, node) -> tuple | None:
    """(Add or None, Cast, Mul, weight scale, float bias or None) after ``node``, or None."""
    nxt = g.users.get(node.output[0], [])
    add = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "Add" else None
    after = g.users.get((add or node).output[0], [])
    cast = after[0] if len(after) == 1 and after[0].op_type == "Cast" else None
    if cast is None:
        return None
    mul = g.only_user(cast.output[0], "Mul")
    if mul is None:
        return None
    scales = g.producer.get(next(i for i in mul.input if i != cast.output[0]))
    if scales is None or scales.op_type != "Mul":
        return None
    w_scale = next((g.consts[i] for i in scales.input if i in g.consts), None)
    if w_scale is None:
        return None
    bias = None
    if add is not None:
        bias = _float_bias(g, next(i for i in add.input if i != node.output[0]))
        if bias is None:
            return None
    return add, cast, mul, w_scale, bias


def _float_bias(g: _Graph, name: str) -> np.ndarray | None:
    """The float bias behind an integer one (Reshape <- Cast <- Floor/Round <- Div(bias, scales))."""
    seen = 0
    while name not in g.consts and seen < 6:
        p = g.producer.get(name)
        if p is None:
            return None
        if p.op_type == "Div":
            return g.consts.get(p.input[0])
        name, seen = p.input[0], seen + 1
    return None


def rewrite_dynamic_lstm(g: _Graph, record: DequantizeRecord) -> None:
    """DynamicQuantizeLSTM -> LSTM with W, R dequantized ([D, in, 4H] int8 -> [D, 4H, in] float)."""
    from onnx import helper

    for node in list(g.graph.node):
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        ins = list(node.input) + [""] * (12 - len(node.input))
        if not all(ins[i] in g.consts for i in (1, 2, 8, 10)):
            continue
        name = node.name or node.output[0]
        mats = []
        for q, s, z, what in ((1, 8, 9, "W"), (2, 10, 11, "R")):
            scale = np.asarray(g.consts[ins[s]], np.float32)
            zp = np.asarray(g.consts[ins[z]], np.float32) if ins[z] else np.zeros_like(scale)
            shape = (-1, 1, 1) if scale.ndim == 1 else (scale.shape[0], 1, -1)
            value = (g.consts[ins[q]].astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
            mats.append(g.add_const(f"{name}/{what}_float", value.transpose(0, 2, 1).astype(np.float32)))
            for d in range(value.shape[0]):  # a grid per direction, channels along 4H
                record.add_grid(f"{mats[-1]}[{d}]", g.consts[ins[q]][d], zp[d], scale[d], out_axis=1, quant_axis=1)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        new = helper.make_node("LSTM", [ins[0], *mats, *ins[3:8]], list(node.output), name=f"{name}/float", **attrs)
        position = list(g.graph.node).index(node)
        g.graph.node.remove(node)
        g.graph.node.insert(position, new)
        record.lstms += 1


def dequantize(proto, emulate_rounding: bool = False) -> DequantizeRecord:
    """Every rewrite above, in place; what was done. With ``emulate_rounding`` the run-time 8-bit
    rounding of dynamically quantized models is kept as float ops (:mod:`.dynamic_rounding`): the float
    graph then reads like onnxruntime on the original; without it, like the float model it came from."""
    record = DequantizeRecord()
    steps = [qoperator_to_qdq, fold_weight_dequantize, remove_activation_qdq]
    if emulate_rounding:
        steps += _emulation_steps(proto)
        record.activation_rounding = "emulated"
    for step in (*steps, rewrite_integer_ops, rewrite_dynamic_lstm):
        step(_Graph(proto), record)
    if record.changed:  # domains no node uses any more (com.microsoft...) would stop onnx-simplifier
        keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx")
                or any(n.domain == o.domain for n in proto.graph.node)]
        del proto.opset_import[:]
        proto.opset_import.extend(keep)
    return record


def _emulation_steps(proto) -> list:
    from edgepack.converter.onnx.dynamic_rounding import emulate_dynamic_quantize, emulate_integer_ops, toposort
    from edgepack.converter.onnx.lstm_rounding import emulate_dynamic_lstm, lstm_steps

    steps_of = lstm_steps(proto)

    def lstms(g: _Graph, record: DequantizeRecord) -> None:
        emulate_dynamic_lstm(g, record, steps_of)

    def tidy(g: _Graph, record: DequantizeRecord) -> None:
        if not (record.rounding_emulated or record.lstms):
            return  # nothing was rewritten: the graph keeps its order (a float model with Ifs, silero_vad_half)
        toposort(g.graph)
        keep = [vi for vi in g.graph.value_info if vi.type.tensor_type.elem_type not in _INTEGER_TYPES]
        del g.graph.value_info[:]  # uint8 / int32 tensors are float now
        g.graph.value_info.extend(keep)

    return [emulate_dynamic_quantize, emulate_integer_ops, lstms, tidy]


_INTEGER_TYPES = {2, 3, 6}  # TensorProto UINT8, INT8, INT32
