"""ONNX ``LSTM`` nodes of streaming models rewritten as the cell's elementary ops, one step per
time step: Gemm, MatMul, Add, Split, Sigmoid, Tanh, Mul.

Why: onnx2tf builds a Keras LSTM whose initial state must match ``cell.state_size``; a state fed in
from a graph input ([2, batch, 128] in silero's VAD) breaks that ("initial_state ... not compatible",
"Dimension 0 in both shapes must be equal"). The elementary ops translate one to one, quantize to
int8 op by op, and run on TFLite Micro, which has no fused LSTM kernel for every build. Only the
common form is rewritten: forward, one direction, layout 0, default activations, no clip, no
peepholes, no sequence lengths, constant weights, a static number of steps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_MAX_STEPS = 64  # longer sequences stay a fused LSTM (unrolled graphs grow with the steps)


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain(node, consts: dict[str, np.ndarray], steps: int | None) -> bool:
    a = _attrs(node)
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    direction = a.get("direction", b"forward")
    ins = list(node.input) + [""] * (8 - len(node.input))
    return (direction in (b"forward", "forward") and not a.get("layout", 0) and "clip" not in a
            and not a.get("input_forget", 0) and acts in ([], ["Sigmoid", "Tanh", "Tanh"])
            and ins[1] in consts and ins[2] in consts and (not ins[3] or ins[3] in consts)
            and not ins[4] and (not ins[7] or (ins[7] in consts and not np.any(consts[ins[7]])))
            and steps is not None and 1 <= steps <= _MAX_STEPS and consts[ins[1]].shape[0] == 1)


def lower_lstms(proto) -> int:
    """Rewrite every plain LSTM of the top graph in place; returns how many were rewritten."""
    from onnx import numpy_helper, shape_inference

    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # Squeeze/Unsqueeze/Split take their axes as inputs from opset 13 on
        return 0
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    try:
        inferred = shape_inference.infer_shapes(proto)
        dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
                for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    except Exception as err:  # noqa: BLE001 — without shapes nothing is rewritten
        log.debug("shape inference failed: %s", err)
        return 0
    new_nodes, count = [], 0
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        steps = (dims.get(node.input[0]) or [None])[0] if node.op_type == "LSTM" else None
        if node.op_type == "LSTM" and _plain(node, consts, steps):
            new_nodes.extend(_unrolled(node, consts, int(steps), graph, count, opset, producers))
            count += 1
        else:
            new_nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


def _unsqueezed(name: str, producers: dict[str, Any], consts: dict[str, np.ndarray]) -> str | None:
    """The tensor ``name`` is ``Unsqueeze(x, [0])`` of: reading x itself keeps the cell 2-D, which
    onnx2tf translates as it is (a 3-D tensor it may take for NCW and transpose)."""
    node = producers.get(name)
    if node is None or node.op_type != "Unsqueeze" or len(node.input) < 2:
        return None
    axes = consts.get(node.input[1])
    return node.input[0] if axes is not None and axes.reshape(-1).tolist() == [0] else None


def _unrolled(node, consts: dict[str, np.ndarray], steps: int, graph, index: int, opset: int,
              producers: dict[str, Any]) -> list[Any]:
    from onnx import helper, numpy_helper

    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    hidden = int(consts[ins[2]].shape[-1])
    p = f"{node.name or 'LSTM'}_cell{index}/"
    w_t = consts[ins[1]][0].T.astype(np.float32)  # [input, 4H], gates i, o, f, c
    r_t = consts[ins[2]][0].T.astype(np.float32)  # [H, 4H]
    bias = consts[ins[3]][0] if ins[3] else np.zeros(8 * hidden, np.float32)
    b = (bias[:4 * hidden] + bias[4 * hidden:]).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(w_t, p + "W"), numpy_helper.from_array(r_t, p + "R"),
                              numpy_helper.from_array(b, p + "B"),
                              numpy_helper.from_array(np.array([0], np.int64), p + "axis0"),
                              numpy_helper.from_array(np.array([0, 1], np.int64), p + "axes01")])
    nodes = []

    def add(op: str, inputs: list[str], name: str, n_out: int = 1, **kw) -> list[str]:
        o = [f"{p}{name}" if n_out == 1 else f"{p}{name}_{k}" for k in range(n_out)]
        nodes.append(helper.make_node(op, inputs, o, name=f"{p}{name}", **kw))
        return o

    h, c = ((_unsqueezed(v, producers, consts) or add("Squeeze", [v, p + "axis0"], f"{k}_init")[0]) if v else None
            for k, v in (("h", ins[5]), ("c", ins[6])))
    x_whole = _unsqueezed(ins[0], producers, consts) if steps == 1 else None
    ys = []
    for t in range(steps):
        graph.initializer.append(numpy_helper.from_array(np.array(t, np.int64), f"{p}t{t}"))
        x = x_whole or add("Gather", [ins[0], f"{p}t{t}"], f"x{t}", axis=0)[0]
        gates = add("MatMul", [x, p + "W"], f"xw{t}")[0]
        gates = add("Add", [gates, p + "B"], f"xwb{t}")[0]
        if h is not None:
            hr = add("MatMul", [h, p + "R"], f"hr{t}")[0]
            gates = add("Add", [gates, hr], f"gates{t}")[0]
        split = {"num_outputs": 4} if opset >= 18 else {}
        i, o, f, g = add("Split", [gates], f"split{t}", n_out=4, axis=1, **split)
        i, o, f = (add("Sigmoid", [v], f"{k}{t}")[0] for k, v in (("i", i), ("o", o), ("f", f)))
        g = add("Tanh", [g], f"g{t}")[0]
        ig = add("Mul", [i, g], f"ig{t}")[0]
        c = ig if c is None else add("Add", [add("Mul", [f, c], f"fc{t}")[0], ig], f"c{t}")[0]
        h = add("Mul", [o, add("Tanh", [c], f"tc{t}")[0]], f"h{t}")[0]
        ys.append(h)
    if outs[0]:
        parts = [add("Unsqueeze", [y, p + "axes01"], f"y{t}")[0] for t, y in enumerate(ys)]
        nodes.append(helper.make_node("Concat", parts, [outs[0]], name=p + "Y", axis=0) if len(parts) > 1
                     else helper.make_node("Identity", parts, [outs[0]], name=p + "Y"))
    if outs[1]:
        nodes.append(helper.make_node("Unsqueeze", [h, p + "axis0"], [outs[1]], name=p + "Y_h"))
    if outs[2]:
        nodes.append(helper.make_node("Unsqueeze", [c, p + "axis0"], [outs[2]], name=p + "Y_c"))
    return nodes
