"""ONNX function ops expanded into the basic ops ONNX defines them with.

Many ONNX ops (LayerNormalization, Clip, CastLike, Swish, SoftmaxCrossEntropyLoss, Gelu...) are
*functions*: the standard gives each one a body of more basic ops, the same body the backend tests
run as ``*_expanded``. onnx2tf has no translation for some of them (CastLike, Swish) and mis-translates
others for some attributes (LayerNormalization over axis 0 or 1, Clip without bounds); the
expanded form goes through. :func:`expand_functions` replaces such nodes by their body, with the
body's tensors renamed apart and its attribute references resolved; :func:`cast_like_to_cast`
turns ``CastLike(x, like)`` into ``Cast(x, to=<like's type>)``, which is what its body is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_MAX_ROUNDS = 8  # a body may hold function ops again (LayerNormalization's CastLike...)


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def value_types(proto) -> dict[str, Any]:
    """Tensor name -> TypeProto for every value whose type ONNX's shape inference knows."""
    import onnx
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as err:  # noqa: BLE001 — inference is best effort; unknown types just stay unexpanded
        log.info("shape inference failed before function expansion: %s", str(err).splitlines()[0][:200])
        inferred = proto
    g = inferred.graph
    types = {vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output) if vi.type.HasField("tensor_type")}
    for t in g.initializer:
        types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and node.output:
                    types.setdefault(node.output[0], helper.make_tensor_type_proto(a.t.data_type, list(a.t.dims)))
    return types


def cast_like_to_cast(proto) -> int:
    """``CastLike(x, like)`` -> ``Cast(x, to=elem_type(like))`` where ``like``'s type is known (in
    place, main graph). Returns how many were rewritten."""
    from onnx import helper

    types = None
    count = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        types = types if types is not None else value_types(proto)
        like = types.get(node.input[1])
        if like is None or not like.tensor_type.elem_type:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name == "saturate"}
        cast = helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name,
                                to=like.tensor_type.elem_type, **attrs)
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, cast)
        count += 1
    return count


def _function_body(node, opset: int, types: dict[str, Any]):
    """The FunctionProto ONNX defines ``node`` with at ``opset`` (None when it has none we can use)."""
    import onnx
    from onnx import defs

    if node.domain not in ("", "ai.onnx") or not defs.has(node.op_type):
        return None
    try:
        schema = defs.get_schema(node.op_type, opset)
    except defs.SchemaError:
        return None
    fn = onnx.FunctionProto()
    versions = [v for v in schema.function_opset_versions if v <= opset]
    if versions:
        fn.ParseFromString(schema.get_function_with_opset_version(max(versions)))
        return fn if fn.node else None
    versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not versions:
        return None
    empty = onnx.TypeProto()
    arg_types = []
    for name in node.input:
        if name and name not in types:
            return None  # the body depends on input types we do not know
        arg_types.append((types[name] if name else empty).SerializeToString())
    try:
        raw = schema.get_context_dependent_function_with_opset_version(max(versions), node.SerializeToString(),
                                                                        arg_types)
    except Exception as err:  # noqa: BLE001 — onnx refuses to build this body: the node stays as it is
        log.info("no function body for %s: %s", node.name or node.op_type, str(err).splitlines()[0][:200])
        return None
    fn.ParseFromString(raw)
    return fn if fn.node else None


def _resolve_attributes(body_node, node, fn) -> None:
    """Attributes of ``body_node`` that refer to the function's attributes (``ref_attr_name``) take
    the caller's value, or the function's default; without either they are left out (the op's own
    default then applies)."""
    given = {a.name: a for a in node.attribute}
    defaults = {a.name: a for a in fn.attribute_proto}
    kept = []
    for a in body_node.attribute:
        if not a.ref_attr_name:
            kept.append(a)
            continue
        source = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
        if source is not None:
            copy = type(a)()
            copy.CopyFrom(source)
            copy.name = a.name
            kept.append(copy)
    del body_node.attribute[:]
    body_node.attribute.extend(kept)


def _inline(node, fn, fresh: Callable[[str], str]) -> list[Any]:
    """``fn``'s nodes computing ``node``: formal inputs/outputs bound to the node's tensors, every
    other tensor renamed apart."""
    import onnx

    names = {formal: actual for formal, actual in zip(fn.input, node.input)}
    names.update({formal: "" for formal in list(fn.input)[len(node.input):]})  # optional inputs not given
    names.update({formal: actual for formal, actual in zip(fn.output, node.output)})
    prefix = node.name or node.op_type

    def bind(name: str) -> str:
        if not name:
            return ""
        if name not in names:
            names[name] = fresh(f"{prefix}/{name}")
        return names[name]

    out = []
    for j, body_node in enumerate(fn.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(body_node)
        copy.name = fresh(f"{prefix}/{body_node.op_type}_{j}")
        copy.input[:] = [bind(n) for n in body_node.input]
        copy.output[:] = [bind(n) for n in body_node.output]
        _resolve_attributes(copy, node, fn)
        out.append(copy)
    return out


_CONSTANT_ATTRS = {"value_float": "float32", "value_floats": "float32", "value_int": "int64", "value_ints": "int64"}


def constants_as_tensors(proto) -> int:
    """``Constant`` nodes holding ``value_float``/``value_int``(s) get the same value as a ``value``
    tensor (in place, main graph): onnx2tf reads ``value`` only ("'float' object has no attribute
    'shape'"). Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    count = 0
    for node in proto.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        if attr.name not in _CONSTANT_ATTRS:
            continue
        value = np.asarray(helper.get_attribute_value(attr), dtype=_CONSTANT_ATTRS[attr.name])
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
        count += 1
    return count


def _used_names(graph) -> set[str]:
    used = {t.name for t in graph.initializer} | {vi.name for vi in (*graph.input, *graph.output)}
    for n in graph.node:
        used.update((n.name, *n.input, *n.output))
    return used


def expand_functions(proto, ops: set[str] | None = None) -> int:
    """Replace function ops of the main graph (those in ``ops``, or all when None) by their ONNX
    bodies, repeatedly, CastLike by Cast; in place. Returns how many nodes were expanded."""
    opset = _default_opset(proto)
    used = _used_names(proto.graph)

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    total = 0
    for _ in range(_MAX_ROUNDS):
        total += cast_like_to_cast(proto)
        types = value_types(proto)
        nodes, expanded = [], 0
        for node in proto.graph.node:
            fn = _function_body(node, opset, types) if ops is None or node.op_type in ops else None
            if fn is None:
                nodes.append(node)
                continue
            nodes.extend(_inline(node, fn, fresh))
            expanded += 1
        if not expanded:
            break
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        constants_as_tensors(proto)  # bodies write Constant(value_float=...), which onnx-simplifier refuses too
        total += expanded
    return total
