"""Arithmetic and comparisons on 8- and 16-bit integers, computed in int32.

TFLite has kernels for ADD, MINIMUM, LESS... on int8/uint8/int16 tensors only when they are
quantized; a float model that adds two int8 tensors (ONNX's ``Add`` on int8, ``Min`` on int16,
``Less`` on uint8) fails in TensorFlow's converter ("'tf.AddV2' op is neither a custom op nor a flex
op"). :func:`widen_small_integers` casts the inputs of such a node to int32 and its result back to
the input type (ONNX's integer arithmetic wraps around; the cast back does the same), so the node
computes the same values with kernels TFLite has.
"""

from __future__ import annotations

from edgepack.converter.onnx.functions import value_types

# op -> whether its output has the inputs' type (arithmetic) rather than bool (comparisons)
_WIDENED = {"Add": True, "Sub": True, "Mul": True, "Min": True, "Max": True, "Sum": True, "Neg": True,
            "Abs": True, "Less": False, "LessOrEqual": False, "Greater": False, "GreaterOrEqual": False,
            "Equal": False}


def _small_integer_types() -> frozenset[int]:
    from onnx import TensorProto

    return frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16})


def widen_small_integers(proto) -> int:
    """Rewrite the main graph's nodes of :data:`_WIDENED` whose inputs are int8/uint8/int16 to compute
    in int32 (in place). Returns how many nodes were rewritten."""
    from onnx import TensorProto, helper

    small = _small_integer_types()
    types = None
    used = {n for node in proto.graph.node for n in (*node.input, *node.output, node.name)}
    nodes, count = [], 0
    for node in proto.graph.node:
        if node.op_type not in _WIDENED or node.domain not in ("", "ai.onnx") or not node.input:
            nodes.append(node)
            continue
        types = types if types is not None else value_types(proto)
        elem = {types[n].tensor_type.elem_type if n in types else 0 for n in node.input}
        if len(elem) != 1 or not elem <= small:
            nodes.append(node)
            continue
        original = elem.pop()
        wide = [_fresh(f"{name}/int32", used) for name in node.input]
        nodes.extend(helper.make_node("Cast", [name], [w], name=_fresh(f"{w}/cast", used), to=TensorProto.INT32)
                     for name, w in zip(node.input, wide))
        node.input[:] = wide
        nodes.append(node)
        if _WIDENED[node.op_type]:
            narrow = list(node.output)
            node.output[:] = [_fresh(f"{name}/int32", used) for name in narrow]
            nodes.extend(helper.make_node("Cast", [w], [name], name=_fresh(f"{name}/cast", used), to=original)
                         for w, name in zip(node.output, narrow))
        count += 1
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return count


def _fresh(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name
