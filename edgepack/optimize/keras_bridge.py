"""Rebuild a Keras 3 model as an equivalent tf_keras model, so tfmot (which needs tf_keras) can work on it.

Each layer is recreated from its config in tf_keras (config keys tf_keras does not know are dropped,
serialized objects are rewritten to the older format), the graph is rewired the same way, weights are
copied layer by layer, and both models are run on sample data: the maximum absolute difference of
the outputs is reported, and a mismatch stops the conversion.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.errors import ConversionError
from edgepack.formats.base import call_keras
from edgepack.optimize.graph import Node, is_tf_keras, read_graph, rebuild

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # relative to the output range; float32 kernels may differ in summation order


@dataclass(frozen=True)
class BridgeReport:
    layers: int
    max_abs_diff: float
    dropped_config: dict[str, list[str]]  # layer -> config keys tf_keras does not accept

    def to_dict(self) -> dict[str, Any]:
        return {"from": "keras3", "to": "tf_keras", "layers": self.layers,
                "max_abs_diff": self.max_abs_diff, "dropped_config": self.dropped_config}


def _legacy(value: Any) -> Any:
    """Keras 3 serialized objects → the ``{class_name, config}`` form tf_keras reads."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" or value.get("class_name") == "FloatDTypePolicy":
            return value.get("config", {}).get("name", "float32")
        if "class_name" in value and "module" in value:
            config = _legacy(value.get("config") or {})
            cls = _tf_keras_object(str(value["module"]), value["class_name"])
            if cls is not None and isinstance(config, dict):
                accepted = _accepted(cls)
                config = {k: v for k, v in config.items() if k in accepted}
            return {"class_name": value["class_name"], "config": config}
        return {k: _legacy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_legacy(v) for v in value]
    return value


def _tf_keras_object(module: str, class_name: str) -> type | None:
    """The tf_keras class for a Keras 3 initializer/regularizer/constraint, to filter its config."""
    import tf_keras

    kind = module.split(".")[1] if module.count(".") >= 1 else ""
    namespace = getattr(tf_keras, kind, None) if kind in ("initializers", "regularizers", "constraints") else None
    cls = getattr(namespace, class_name, None) if namespace is not None else None
    return cls if isinstance(cls, type) else None


_BASE_KWARGS = {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size",
                "activity_regularizer", "dynamic", "input_dim"}


def _accepted(cls: type) -> set[str] | None:
    """Constructor parameters of a tf_keras layer class; None when it takes arbitrary **kwargs only."""
    params: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        params |= {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params | _BASE_KWARGS


def _tf_keras_layer(node: Node, dropped: dict[str, list[str]]) -> Any:
    import tf_keras

    layer = node.layer
    cls_name = type(layer).__name__
    cls = getattr(tf_keras.layers, cls_name, None)
    if cls is None or not isinstance(cls, type):
        raise LookupError(cls_name)
    config = _legacy(layer.get_config())
    accepted = _accepted(cls)
    extra = sorted(k for k in config if k not in accepted)
    if extra:
        dropped[layer.name] = extra
        config = {k: v for k, v in config.items() if k not in extra}
    return cls.from_config(config)


def to_tf_keras(model: Any, sample: np.ndarray | list[np.ndarray] | None = None) -> tuple[Any, BridgeReport]:
    """The tf_keras twin of a Keras 3 ``model`` and a report of how closely it matches."""
    if is_tf_keras(model):
        return model, BridgeReport(len(model.layers), 0.0, {})
    import tf_keras

    graph = read_graph(model)
    unsupported: list[str] = []
    dropped: dict[str, list[str]] = {}

    def make(node: Node) -> Any:
        try:
            return _tf_keras_layer(node, dropped)
        except (LookupError, TypeError, ValueError) as err:
            unsupported.append(f"{node.layer.name} ({type(node.layer).__name__}: {str(err)[:80] or 'unknown'})")
            return tf_keras.layers.Identity(name=node.layer.name)  # placeholder so the scan continues

    try:
        twin, new_layers = rebuild(graph, tf_keras, make, model.name)
    except Exception as err:  # wiring a placeholder into a multi-input slot fails; report what we know
        if not unsupported:
            raise ConversionError(f"cannot rebuild Keras 3 model {model.name!r} in tf_keras: "
                                  f"{str(err).splitlines()[0][:200]}") from err
        twin = None
    if unsupported:
        raise ConversionError("Keras 3 model has layers tf_keras cannot rebuild: " + "; ".join(unsupported[:8]),
                              hint="tfmot (sparsity, clustering, QAT) needs tf_keras layers; use --prune channels "
                                   "or --low-rank without --qat/--cluster, or replace these layers")
    for node in graph.nodes:
        weights = node.layer.get_weights()
        try:
            new_layers[node.layer.name].set_weights(weights)
        except ValueError as err:
            raise ConversionError(f"layer {node.layer.name}: weights do not fit its tf_keras twin ({err})") from err
    diff = compare(model, twin, sample) if sample is not None else 0.0
    for name, keys in dropped.items():
        log.debug("keras bridge: layer %s: dropped config keys %s", name, ", ".join(keys))
    return twin, BridgeReport(len(graph.nodes), diff, dropped)


def _predict(model: Any, x: Any) -> list[np.ndarray]:
    return [np.asarray(o, dtype=np.float64) for o in call_keras(model, x if isinstance(x, list) else [x])]


def compare(a: Any, b: Any, sample: np.ndarray | list[np.ndarray]) -> float:
    """Max absolute output difference; raises when it exceeds :data:`TOLERANCE` of the output range."""
    outs_a, outs_b = _predict(a, sample), _predict(b, sample)
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(outs_a, outs_b))
    scale = max(1.0, max(float(np.max(np.abs(x))) for x in outs_a))
    if not np.isfinite(diff) or diff > TOLERANCE * scale:
        raise ConversionError(f"the tf_keras rebuild of {a.name!r} differs from the Keras 3 model by up to "
                              f"{diff:.3g} on sample data", hint="report this model; convert without "
                                                                  "--qat / --cluster / --prune sparsity meanwhile")
    return diff
