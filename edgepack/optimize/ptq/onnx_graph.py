"""Small helpers over an ONNX ``GraphProto``: constants, producers, consumers, node removal.

The ptq rewrites read and edit the graph as exported (before onnx-simplifier), where constants
come both as initializers and as ``Constant`` nodes (paddle2onnx writes every weight as one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GraphIndex:
    """Who produces and who consumes each tensor name, and the graph's constant values."""

    graph: Any
    producer: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    constants: dict[str, Any] = field(default_factory=dict)  # name -> TensorProto (initializer or Constant)
    outputs: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, graph) -> GraphIndex:
        idx = cls(graph)
        for t in graph.initializer:
            idx.constants[t.name] = t
        for node in graph.node:
            for out in node.output:
                idx.producer[out] = node
            for name in node.input:
                idx.consumers[name].append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                idx.constants[node.output[0]] = node.attribute[0].t
        idx.outputs = {o.name for o in graph.output}
        return idx

    def value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def scalar(self, name: str) -> float | None:
        """The value of a constant with a single element, else None."""
        v = self.value(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def private(self, name: str, allowed: set[int]) -> bool:
        """True when every consumer of ``name`` is one of the nodes ``allowed`` (by id) and it is no graph output."""
        return name not in self.outputs and all(id(n) in allowed for n in self.consumers.get(name, []))


def attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def opset(proto, domain: str = "") -> int:
    return next((o.version for o in proto.opset_import if o.domain in (domain, "ai.onnx" if not domain else domain)), 0)


def set_initializer(graph, name: str, array: np.ndarray) -> None:
    """Replace (or add) the initializer ``name``; a ``Constant`` node of that name becomes an initializer."""
    from onnx import numpy_helper

    tensor = numpy_helper.from_array(np.asarray(array), name)
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(tensor)
            return
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] == name:
            graph.node.remove(node)
    graph.initializer.append(tensor)


def remove_nodes(graph, nodes: list[Any]) -> None:
    doomed = {id(n) for n in nodes}
    keep = [n for n in graph.node if id(n) not in doomed]
    del graph.node[:]
    graph.node.extend(keep)


def unique_name(idx: GraphIndex, base: str) -> str:
    taken = set(idx.producer) | set(idx.constants) | {n.name for n in idx.graph.node}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def drop_unused_constants(graph) -> int:
    """Remove initializers and ``Constant`` nodes that no node reads any more (after a rewrite)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead_nodes = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
    remove_nodes(graph, dead_nodes)
    inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in inputs]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(dead_nodes) + dropped


def session(proto):
    """An onnxruntime session on ``proto`` (quiet, 2 threads, CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
