"""ONNX graph preparation before translation: the steps that turn an exported graph with control flow
and run-time switches into the plain dataflow graph onnx2tf translates.

1. **Freeze inputs** the user names (``--input-value sr=16000``): each becomes a constant.
2. **Inline ``If`` nodes** whose condition is constant after that: the condition is evaluated with
   onnxruntime when it needs a computation (``Equal(sr, 16000)``, shape arithmetic), the taken
   branch's nodes replace the ``If``; branches hold more ``If`` nodes, so this repeats until none
   is left that can be decided.
3. **Rename** nodes and tensors whose names TensorFlow refuses as scope names (``Softmax@0``); the
   graph's inputs and outputs keep the names the source has.

Constant folding and simplification (onnx-simplifier) follow in :func:`ready.prepare`. What
each step did is returned as a :class:`PrepareRecord`, which the manifest keeps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, UsageError

log = logging.getLogger(__name__)

# TensorFlow's rule for a name scope (tensorflow/python/framework/ops.py, _VALID_SCOPE_NAME_REGEX)
_VALID_SCOPE = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")
_VALID_FIRST = re.compile(r"^[A-Za-z0-9.]")
# ops whose output is not a function of their inputs: never evaluated ahead of time
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "If", "Loop", "Scan"}


@dataclass
class PrepareRecord:
    """What preparation did, for the manifest (``stages[].detail`` of the graph stage)."""

    frozen_inputs: dict[str, Any] = field(default_factory=dict)
    inlined_ifs: int = 0
    ifs_left: int = 0
    renamed: int = 0
    lowered_lstms: int = 0
    tidied_slices: int = 0
    expanded_functions: int = 0  # ONNX function ops replaced by their bodies (functions.py)
    widened_integer_ops: int = 0  # int8/uint8/int16 arithmetic computed in int32 (integers.py)
    dequantized: Any = None  # dequantize.DequantizeRecord
    nodes_before: int = 0
    nodes_after: int = 0
    # rewrites into forms integer kernels run well (integer_forms.apply): {rewrite: count}
    integer_forms: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"frozen_inputs": self.frozen_inputs, "inlined_ifs": self.inlined_ifs, "ifs_left": self.ifs_left,
                "renamed": self.renamed, "lowered_lstms": self.lowered_lstms,
                "tidied_slices": self.tidied_slices, "expanded_functions": self.expanded_functions,
                "widened_integer_ops": self.widened_integer_ops,
                "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                **({"dequantized": self.dequantized.to_dict()} if self.dequantized is not None
                   and self.dequantized.changed else {}),
                **({"integer_forms": dict(self.integer_forms)} if self.integer_forms else {})}


def freeze_inputs(proto, values: Mapping[str, np.ndarray]) -> None:
    """Turn the named graph inputs into initializers holding ``values`` (in place)."""
    from onnx import numpy_helper

    inputs = {vi.name: vi for vi in proto.graph.input}
    for name, value in values.items():
        vi = inputs.get(name)
        if vi is None:
            raise UsageError(f"--input-value {name}: the ONNX model has no input {name!r}",
                             hint=f"inputs: {', '.join(inputs)}")
        proto.graph.input.remove(vi)
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


# -- If inlining ------------------------------------------------------------------------------------
def _static_tensors(graph, static_shapes: set[str]) -> set[str]:
    """Tensors whose values do not depend on the inputs' values: initializers, constants, and what
    deterministic ops compute from them (Shape/Size of a tensor of known shape included)."""
    static = {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if node.op_type in _NONDETERMINISTIC:
            continue
        from_shape = node.op_type in ("Shape", "Size") and node.input[0] in static_shapes
        if from_shape or all(i in static for i in node.input):
            static.update(node.output)
    return static


def _known_shapes(proto) -> set[str]:
    """Tensors whose shape onnx's shape inference finds fully static."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as err:  # noqa: BLE001 — inference is a help here; without it only constants count
        log.debug("shape inference failed: %s", err)
        return set()
    known = set()
    graph = inferred.graph
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            known.add(vi.name)
    return known


def _cone(graph, names: list[str]) -> list[Any]:
    """The nodes ``names`` are computed from, in graph order."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    want, seen, stack = set(), set(), list(names)
    while stack:
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        i = producer[t]
        want.add(i)
        stack.extend(graph.node[i].input)
    return [graph.node[i] for i in sorted(want)]


def _evaluate(proto, names: list[str]) -> dict[str, np.ndarray]:
    """The values of ``names`` (static boolean conditions of the top graph), computed by onnxruntime
    on the part of the graph they are computed from; inputs it reads only for their shapes are fed
    zeros of their static shapes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = proto.graph
    nodes = _cone(graph, names)
    read = {i for n in nodes for i in n.input}
    inputs = [vi for vi in graph.input if vi.name in read]
    probe = helper.make_graph(nodes, "conditions", inputs,
                              [helper.make_tensor_value_info(n, TensorProto.BOOL, None) for n in names],
                              initializer=[t for t in graph.initializer if t.name in read])
    model = helper.make_model(probe, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    feeds = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        feeds[vi.name] = np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values = sess.run(names, feeds)
    except Exception as err:  # onnxruntime's own exception types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConversionError(f"cannot evaluate the If conditions {', '.join(names[:3])}: {first[:200]}") from err
    return dict(zip(names, values))


def _used_names(graph) -> set[str]:
    names = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    for node in walk_nodes(graph):
        names.update(node.input)
        names.update(node.output)
    return names


def walk_nodes(graph) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If branches, Loop bodies), depth first."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from walk_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk_nodes(g)


def _branch_nodes(node, taken: bool, taken_names: set[str]) -> list[Any]:
    """The taken branch's nodes as top-level nodes, then Identity nodes giving the If's outputs. Its
    initializers become Constant nodes; its local names that clash with the outer graph's get a prefix."""
    from onnx import helper

    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
    local = {t.name for t in branch.initializer} | {o for n in branch.node for o in n.output}
    rename = {n: f"{node.name}/{n}" for n in local if n in taken_names}

    def r(name: str) -> str:
        return rename.get(name, name)

    nodes = [helper.make_node("Constant", [], [r(t.name)], value=t) for t in branch.initializer]
    for inner in branch.node:
        copy = type(inner)()
        copy.CopyFrom(inner)
        _rename_io(copy, r)
        nodes.append(copy)
    for out, bout in zip(node.output, branch.output):
        nodes.append(helper.make_node("Identity", [r(bout.name)], [out], name=f"{node.name}/out_{out}"))
    return nodes


def _rename_io(node, rename) -> None:
    """Rename a node's inputs and outputs, and the outer-scope names its subgraphs read."""
    from onnx import AttributeProto

    node.input[:] = [rename(i) for i in node.input]
    node.output[:] = [rename(o) for o in node.output]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                _rename_io(inner, rename)
            for t in g.initializer:
                t.name = rename(t.name)
            for vo in [*g.input, *g.output]:
                vo.name = rename(vo.name)


def inline_ifs(proto, max_rounds: int = 64) -> tuple[int, int]:
    """Replace every top-level ``If`` whose condition is static by its taken branch, repeatedly (the
    branches' own Ifs come up to the top). Returns (inlined, Ifs left in the graph)."""
    inlined = 0
    for _ in range(max_rounds):
        graph = proto.graph
        ifs = [n for n in graph.node if n.op_type == "If"]
        if not ifs:
            break
        static = _static_tensors(graph, _known_shapes(proto))
        decidable = [n for n in ifs if n.input[0] in static]
        chosen = {i for i, n in enumerate(graph.node) if n.op_type == "If" and n.input[0] in static}
        if not decidable:
            break
        consts = _constant_values(graph)
        need = [n.input[0] for n in decidable if n.input[0] not in consts]
        values = {**consts, **(_evaluate(proto, sorted(set(need))) if need else {})}
        used = _used_names(graph)
        new_nodes = []
        for i, node in enumerate(graph.node):
            if i in chosen:
                taken = bool(np.asarray(values[node.input[0]]).reshape(-1)[0])
                new_nodes.extend(_branch_nodes(node, taken, used))
                inlined += 1
            else:
                new_nodes.append(node)
        del graph.node[:]
        graph.node.extend(new_nodes)
    left = sum(1 for n in walk_nodes(proto.graph) if n.op_type == "If")
    return inlined, left


def _constant_values(graph) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the top graph, by tensor name."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                out[node.output[0]] = numpy_helper.to_array(value.t)
    return out


# -- names TensorFlow refuses ---------------------------------------------------------------------------
def valid_scope_name(name: str) -> bool:
    """TensorFlow's scope rule; a leading '/' (PyTorch exports) onnx2tf handles itself."""
    return bool(_VALID_SCOPE.match(name))


def _clean(name: str) -> str:
    fixed = re.sub(r"[^A-Za-z0-9_.\\/>-]", "_", name)
    return fixed if _VALID_FIRST.match(fixed) else f"t{fixed}"


def rename_for_tensorflow(proto) -> int:
    """Rename nodes and tensors TensorFlow refuses as scope names (``Softmax@0`` -> ``Softmax_0``);
    the graph's inputs and outputs keep their names. Returns how many names changed."""
    graph = proto.graph
    keep = {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    tensors = _used_names(graph)
    taken = tensors | {n.name for n in walk_nodes(graph)}
    mapping: dict[str, str] = {}

    def fresh(name: str) -> str:
        base, i = _clean(name), 0
        new = base
        while new in taken:
            i += 1
            new = f"{base}_{i}"
        taken.add(new)
        return new

    for name in sorted(tensors - keep):
        if name and not valid_scope_name(name):
            mapping[name] = fresh(name)
    count = len(mapping)
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for vi in graph.value_info:
        vi.name = mapping.get(vi.name, vi.name)
    for node in list(walk_nodes(graph)):
        if node.name and not valid_scope_name(node.name):
            node.name = fresh(node.name)
            count += 1
        _rename_io(node, lambda n: mapping.get(n, n))
    return count


def prepare_graph(proto, values: Mapping[str, np.ndarray]) -> PrepareRecord:
    """Freeze ``values``, inline decidable Ifs and rename for TensorFlow, in place."""
    record = PrepareRecord(nodes_before=sum(1 for _ in walk_nodes(proto.graph)))
    if values:
        freeze_inputs(proto, values)
        record.frozen_inputs = {k: np.asarray(v).tolist() for k, v in values.items()}
    record.inlined_ifs, record.ifs_left = inline_ifs(proto)
    record.renamed = rename_for_tensorflow(proto)
    record.nodes_after = sum(1 for _ in walk_nodes(proto.graph))
    return record


# -- slices -------------------------------------------------------------------------------------------
def tidy_slices(proto) -> int:
    """Slices with constant bounds on a tensor of known shape keep only the axes they cut, with ends
    clamped to the axis size: onnx2tf reads an end of INT64_MAX on the batch axis of a transposed
    tensor as an empty batch (silero's STFT: ``[0, 4, 258]``). Returns how many were rewritten."""
    from onnx import helper, numpy_helper, shape_inference

    graph = proto.graph
    consts = _constant_values(graph)
    extra: list[tuple[str, Any]] = []
    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 — without shapes nothing is rewritten
        return 0
    dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    count = 0
    for node in graph.node:
        if node.op_type != "Slice" or len(node.input) < 4 or any(i not in consts for i in node.input[1:]):
            continue
        shape = dims.get(node.input[0])
        if not shape or None in shape:
            continue
        starts, ends, axes = (consts[i].reshape(-1).tolist() for i in node.input[1:4])
        steps = consts[node.input[4]].reshape(-1).tolist() if len(node.input) > 4 else [1] * len(axes)
        kept = []
        for s, e, a, st in zip(starts, ends, axes, steps):
            size = shape[a % len(shape)]
            if st == 1 and s in (0, -size) and e >= size:
                continue  # the whole axis
            kept.append((s, min(e, size) if st > 0 else e, a % len(shape), st))
        if len(kept) == len(starts) == 1 and ends[0] == kept[0][1]:
            continue
        if not kept:
            kept = [(0, shape[0], 0, 1)]
        # one Slice per axis cut: onnx2tf maps each axis through its layout change on its own
        base, source = node.name or node.output[0], node.input[0]
        for j, cut in enumerate(kept):
            names = [f"{base}/tidy{j}_{what}" for what in ("starts", "ends", "axes", "steps")]
            graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), n) for v, n in zip(cut, names))
            out = node.output[0] if j == len(kept) - 1 else f"{base}/tidy{j}"
            if j == len(kept) - 1:
                node.input[:] = [source, *names]
            else:
                extra.append((node.output[0], helper.make_node("Slice", [source, *names], [out], name=f"{base}/tidy{j}")))
            source = out
        count += 1
    if extra:
        _insert_before(graph, extra)
    return count


def _insert_before(graph, extra: list[tuple[str, Any]]) -> None:
    """Insert each (output name, new node) right before the node that produces that output."""
    before: dict[str, list[Any]] = {}
    for out, new in extra:
        before.setdefault(out, []).append(new)
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(node.output[0], []) if node.output else [])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def run_proto(proto, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    """onnxruntime on a graph in memory (the prepared one)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(outputs, feeds)]
