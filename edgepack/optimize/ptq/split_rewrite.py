"""The graph edit of channel-group splitting (``split.py``): one chain cut into groups, order restored."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepack.optimize.ptq.onnx_graph import GraphIndex, attr, set_initializer, unique_name

# elementwise activations with (at most) scalar constant operands: channel order passes through them
ELEMENTWISE = ("HardSwish", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid")


def _constant(graph, idx: GraphIndex, base: str, array: np.ndarray) -> str:
    name = unique_name(idx, base)
    set_initializer(graph, name, array)
    idx.constants[name] = None  # the name is taken
    return name


def _copy(node, name: str, inputs: list[str], output: str):
    from onnx import NodeProto

    new = NodeProto()
    new.CopyFrom(node)
    new.name = name
    del new.input[:]
    new.input.extend(inputs)
    del new.output[:]
    new.output.append(output)
    return new


def _bias(idx: GraphIndex, node) -> np.ndarray | None:
    return idx.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None


def _group_nodes(graph, idx: GraphIndex, chain, k: int, sel: np.ndarray) -> tuple[list[Any], list[Any], Any]:
    """Group ``k``'s copies of conv1 (+ activation) and of the depthwise conv."""
    c1, act, c2 = chain.conv1, chain.act, chain.conv2
    tag = f"_group{k}"
    w1, b1, w2, b2 = idx.value(c1.input[1]), _bias(idx, c1), idx.value(c2.input[1]), _bias(idx, c2)
    ins1 = [c1.input[0], _constant(graph, idx, f"{c1.input[1]}{tag}", w1[sel])]
    if b1 is not None:
        ins1.append(_constant(graph, idx, f"{c1.input[2]}{tag}", b1[sel]))
    z = unique_name(idx, f"{c1.output[0]}{tag}")
    idx.producer[z] = c1
    first = [_copy(c1, f"{c1.name or 'conv'}{tag}", ins1, z)]
    h = z
    if act is not None:
        h = unique_name(idx, f"{act.output[0]}{tag}")
        idx.producer[h] = act
        first.append(_copy(act, f"{act.name or act.op_type}{tag}", [z, *act.input[1:]], h))
    ins2 = [h, _constant(graph, idx, f"{c2.input[1]}{tag}", w2[sel])]
    if b2 is not None:
        ins2.append(_constant(graph, idx, f"{c2.input[2]}{tag}", b2[sel]))
    y = unique_name(idx, f"{c2.output[0]}{tag}")
    idx.producer[y] = c2
    dw = _copy(c2, f"{c2.name or 'conv'}{tag}", ins2, y)
    for a in dw.attribute:
        if a.name == "group":
            a.i = len(sel)
    return first[:1], first[1:], dw


def permutable_consumer(idx: GraphIndex, name: str) -> Any | None:
    """The Conv (group 1, constant weights) reading ``name`` through private elementwise activations."""
    t = name
    while True:
        node = idx.only_consumer(t)
        if node is None:
            return None
        if node.op_type in ELEMENTWISE and all(idx.scalar(i) is not None for i in node.input[1:] if i):
            t = node.output[0]
            continue
        ok = (node.op_type == "Conv" and node.input[0] == t and attr(node, "group", 1) == 1
              and idx.value(node.input[1]) is not None)
        return node if ok else None


def rewrite_chain(graph, idx: GraphIndex, chain, groups: list[np.ndarray]) -> str:
    """Replace ``chain`` by its groups joined with a Concat; how the channel order was restored."""
    from onnx import helper

    parts = [_group_nodes(graph, idx, chain, k, sel) for k, sel in enumerate(groups)]
    out = chain.conv2.output[0]
    order = np.concatenate(groups)
    how, tail = "in order", []
    joined = out
    if not np.array_equal(order, np.arange(len(order))):
        consumer = permutable_consumer(idx, out)
        if consumer is not None:
            w = idx.value(consumer.input[1])
            consumer.input[1] = _constant(graph, idx, f"{consumer.input[1]}_permuted", w[:, order])
            how = f"input channels of {consumer.name or consumer.op_type} permuted"
        else:
            joined = unique_name(idx, f"{out}_grouped")
            index = _constant(graph, idx, f"{out}_order", np.argsort(order).astype(np.int64))
            tail = [helper.make_node("Gather", [joined, index], [out], name=f"{chain.conv2.name}_order", axis=1)]
            how = "gather"
    concat = helper.make_node("Concat", [p[2].output[0] for p in parts], [joined], name=f"{chain.conv2.name}_groups",
                              axis=1)
    replace = {id(chain.conv1): [n for p in parts for n in p[0]],
               id(chain.conv2): [p[2] for p in parts] + [concat, *tail]}
    if chain.act is not None:
        replace[id(chain.act)] = [n for p in parts for n in p[1]]
    nodes = [m for n in graph.node for m in replace.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    return how
