"""A flavour-neutral view of a Keras layer graph, and rebuilding a model from it.

Keras 3 and tf_keras store their graphs differently, but both tag every symbolic tensor with a
``_keras_history`` of (layer, node index, tensor index). Walking back from the model's outputs over
that history gives exactly this model's nodes, in topological order, for functional and Sequential
models of either flavour. Structured pruning and the Keras 3 → tf_keras bridge both rebuild a model
from this view with new layers.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TensorKey = tuple[str, int, int]  # (layer name, node index, tensor index)


@dataclass
class Node:
    """One call of ``layer`` inside the model."""

    layer: Any
    inputs: list[TensorKey]
    outputs: list[TensorKey]
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shapes: list[tuple] = field(default_factory=list)
    output_shapes: list[tuple] = field(default_factory=list)


@dataclass
class Graph:
    inputs: list[TensorKey]
    input_specs: list[tuple[str, tuple, str]]  # (name, shape without batch, dtype)
    outputs: list[TensorKey]
    nodes: list[Node]  # topological order, input layers excluded

    def calls_per_layer(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.layer.name] = out.get(n.layer.name, 0) + 1
        return out


def is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith("tf_keras")


def keras_module(model: Any):
    """The Keras package the model belongs to (``keras`` or ``tf_keras``)."""
    if is_tf_keras(model):
        import tf_keras

        return tf_keras
    import keras

    return keras


def copy_model(model: Any) -> Any:
    """A new model in ``model``'s own Keras flavour: the same graph with new layers holding the same weights."""
    copy = keras_module(model).models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def selected(name: str, layers: tuple[str, ...] = (), keep_layers: tuple[str, ...] = ()) -> bool:
    """Whether an optimization applies to the layer ``name``: no ``keep_layers`` pattern matches it, and
    ``layers`` is empty or one of its patterns matches (fnmatch, case-sensitive)."""
    if any(fnmatch.fnmatchcase(name, p) for p in keep_layers):
        return False
    return not layers or any(fnmatch.fnmatchcase(name, p) for p in layers)


def _key(tensor: Any) -> TensorKey:
    layer, node_index, tensor_index = tensor._keras_history[:3]
    return (layer.name, int(node_index), int(tensor_index))


def _shape(tensor: Any) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def _node_inputs(node: Any) -> list[Any]:
    if hasattr(node, "keras_inputs"):  # tf_keras
        return list(node.keras_inputs)
    return list(node.input_tensors)  # keras 3


def _node_outputs(node: Any) -> list[Any]:
    out = node.outputs if hasattr(node, "keras_inputs") else node.output_tensors
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _node_kwargs(node: Any) -> dict[str, Any]:
    kwargs = node.call_kwargs if hasattr(node, "call_kwargs") else node.arguments.kwargs
    return {k: v for k, v in (kwargs or {}).items() if not hasattr(v, "_keras_history")}


def read_graph(model: Any) -> Graph:
    """The model's nodes in topological order (post-order DFS from the outputs)."""
    order: list[Node] = []
    seen: set[tuple[str, int]] = set()
    input_keys = [_key(t) for t in model.inputs]

    def visit(tensor: Any) -> None:
        layer, node_index, _ = tensor._keras_history[:3]
        ident = (layer.name, int(node_index))
        if ident in seen or _key(tensor) in input_keys:
            return
        seen.add(ident)
        node = layer._inbound_nodes[node_index]
        ins = _node_inputs(node)
        for t in ins:
            visit(t)
        outs = _node_outputs(node)
        order.append(Node(layer, [_key(t) for t in ins], [_key(t) for t in outs], _node_kwargs(node),
                          [_shape(t) for t in ins], [_shape(t) for t in outs]))

    for t in model.outputs:
        visit(t)
    specs = [((getattr(t, "name", "") or f"input_{i}").split(":")[0], _shape(t)[1:],
              getattr(t.dtype, "name", None) or str(t.dtype)) for i, t in enumerate(model.inputs)]
    return Graph(input_keys, specs, [_key(t) for t in model.outputs], order)


def rebuild(graph: Graph, kmod: Any, make_layer: Callable[[Node], Any], name: str) -> tuple[Any, dict[str, Any]]:
    """A new ``kmod`` functional model with the same wiring; ``make_layer`` supplies each new layer.

    Returns the model and ``{old layer name: new layer}`` (a layer called twice is created once).
    """
    tensors: dict[TensorKey, Any] = {}
    for key, (in_name, shape, dtype) in zip(graph.inputs, graph.input_specs):
        tensors[key] = kmod.Input(shape=shape, dtype=dtype, name=in_name)
    new_layers: dict[str, Any] = {}
    for node in graph.nodes:
        lname = node.layer.name
        if lname not in new_layers:
            new_layers[lname] = make_layer(node)
        args = [tensors[k] for k in node.inputs]
        out = new_layers[lname](args if len(args) > 1 else args[0], **node.kwargs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for key, t in zip(node.outputs, outs):
            tensors[key] = t
    inputs = [tensors[k] for k in graph.inputs]
    outputs = [tensors[k] for k in graph.outputs]
    model = kmod.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=name)
    return model, new_layers
