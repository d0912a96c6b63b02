"""Low-rank factorization: a layer's kernel as the product of two thinner ones, by truncated SVD.

- Dense ``W`` (n×m) becomes Dense(r, no bias) → Dense(m): ``W ≈ (U_r √S_r)(√S_r V_rᵀ)``.
- A 1×1 Conv2D likewise becomes two 1×1 convolutions (the first one strided as the original).
- A k×k Conv2D becomes k×1 (r filters) → 1×k by spatial SVD (Jaderberg et al. 2014, scheme 2): the
  kernel reshaped to a (k·C_in)×(k·C_out) matrix is factorized, so the pair sums over exactly the same
  receptive field; strides, dilation and padding split per axis, so "same" and "valid" both hold.

The rank is the smallest that keeps ``energy`` of the squared singular values, or a fixed ``rank:R``.
A layer is factorized only where the pair has fewer multiply-accumulates than the original; at full
rank the pair computes the original function (within float rounding). Works on Keras 3 and tf_keras
models alike (the graph is rebuilt in the model's own flavour); the second layer of each pair keeps
the original name, activation and bias, so the model's output names do not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.optimize.graph import Node, copy_model, keras_module, read_graph, rebuild, selected
from edgepack.optimize.measure import node_macs
from edgepack.request import LowRankSpec

log = logging.getLogger(__name__)

# Fine-tuning after factorization starts from a close approximation of a trained model: Adam 1e-4, as QAT
# and clustering (pruning, which removes whole channels, fine-tunes at 1e-3).
LEARNING_RATE = 1e-4
SUFFIX = "_lowrank"  # name of the first layer of a pair: <original name>_lowrank


@dataclass(frozen=True)
class LowRankLayer:
    name: str
    kind: str  # "dense", "conv1x1" or "spatial" (k×k → k×1 + 1×k)
    rank_before: int  # full rank of the kernel matrix
    rank_after: int  # the chosen rank (= rank_before when not factorized)
    energy_kept: float  # share of squared singular values the chosen rank keeps
    factorized: bool
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    reason: str = ""  # why a layer was left whole

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "kind", "rank_before", "rank_after", "energy_kept", "factorized",
                                           "params_before", "params_after", "macs_before", "macs_after")}
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class LowRankReport:
    spec: str
    layers: list[LowRankLayer] = field(default_factory=list)
    finetune: Any = None  # FinetuneResult

    def to_dict(self) -> dict[str, Any]:
        done = [la for la in self.layers if la.factorized]
        out: dict[str, Any] = {"spec": self.spec, "factorized": len(done),
                               "macs_before": sum(la.macs_before for la in done),
                               "macs_after": sum(la.macs_after for la in done),
                               "layers": [la.to_dict() for la in self.layers]}
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out


@dataclass
class _Plan:
    kind: str
    rank: int
    full: int
    energy: float
    first: np.ndarray  # kernel of the first layer
    second: np.ndarray  # kernel of the second layer


class _Pair:
    """Two layers applied one after the other, standing in for one layer while the graph is rebuilt."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        return self.second(self.first(x, **kwargs), **kwargs)


def _kind(node: Node) -> str | None:
    layer = node.layer
    cls = type(layer).__name__
    cfg = layer.get_config()
    if cls == "Dense":
        return "dense"
    if cls != "Conv2D" or cfg.get("data_format", "channels_last") not in ("channels_last", None) \
            or int(cfg.get("groups", 1) or 1) != 1:
        return None
    kh, kw = cfg["kernel_size"]
    if kh == kw == 1:
        return "conv1x1"
    if kh > 1 and kw > 1:
        return "spatial"
    return None


def _matrix(kind: str, kernel: np.ndarray) -> np.ndarray:
    if kind == "dense":
        return kernel
    if kind == "conv1x1":
        return kernel[0, 0]
    kh, kw, cin, cout = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)  # M[(i, c), (j, o)] = W[i, j, c, o]


def choose_rank(s: np.ndarray, spec: LowRankSpec) -> int:
    """The smallest rank keeping ``spec.energy`` of ``sum(s**2)``, or ``spec.rank`` (at most full rank)."""
    full = len(s)
    if spec.rank is not None:
        return min(spec.rank, full)
    s2 = np.asarray(s, np.float64) ** 2
    total = float(s2.sum())
    if total <= 0:
        return 1
    cum = np.cumsum(s2) / total
    return min(full, int(np.searchsorted(cum, float(spec.energy) - 1e-12, side="left")) + 1)


def _plan(kind: str, kernel: np.ndarray, spec: LowRankSpec) -> _Plan:
    u, s, vt = np.linalg.svd(_matrix(kind, kernel).astype(np.float64), full_matrices=False)
    r = choose_rank(s, spec)
    total = float(np.sum(s ** 2))
    energy = float(np.sum(s[:r] ** 2) / total) if total > 0 else 1.0
    root = np.sqrt(s[:r])
    a = u[:, :r] * root  # (rows, r)
    b = root[:, None] * vt[:r]  # (r, cols)
    if kind == "dense":
        first, second = a, b
    elif kind == "conv1x1":
        first, second = a[None, None], b[None, None]
    else:
        kh, kw, cin, cout = kernel.shape
        first = a.reshape(kh, cin, r)[:, None]  # (kh, 1, cin, r)
        second = b.reshape(r, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, r, cout)
    return _Plan(kind, r, len(s), round(energy, 6), first.astype(np.float32), second.astype(np.float32))


def _pair_cost(kind: str, node: Node, cfg: dict, plan: _Plan, bias: int) -> tuple[int, int]:
    """(params, MACs) of the factorized pair, from the node's shapes and the two layers' configs."""
    cls = type(node.layer).__name__
    inp, out = node.input_shapes[0], node.output_shapes[0]
    # between the two: the output's positions and ``rank`` channels (a k×1 first layer keeps the input's width)
    mid = (*out[:2], inp[2], plan.rank) if kind == "spatial" else (*out[:-1], plan.rank)
    first = node_macs(cls, _first_config(cfg, kind, plan, node.layer.name + SUFFIX), [inp], [mid])
    second = node_macs(cls, _second_config(cfg, kind, plan), [mid], [out])
    return plan.first.size + plan.second.size + bias, first + second


def factorize(model: Any, spec: LowRankSpec, *, keep_layers: tuple[str, ...] = (), layers: tuple[str, ...] = (),
              only_if_cheaper: bool = True) -> tuple[Any, LowRankReport]:
    """A new model (same Keras flavour) with Dense / 1×1 / k×k Conv2D layers factorized at ``spec``.

    ``only_if_cheaper=False`` factorizes every eligible layer even when the pair costs more MACs
    (the full-rank identity check uses it)."""
    graph = read_graph(model)
    shared = {name for name, n in graph.calls_per_layer().items() if n > 1}
    names = {n.layer.name for n in graph.nodes}
    plans: dict[str, _Plan] = {}
    records: list[LowRankLayer] = []
    for node in graph.nodes:
        kind = _kind(node)
        layer = node.layer
        if kind is None or not selected(layer.name, layers, keep_layers):
            continue
        weights = layer.get_weights()
        cfg = layer.get_config()
        kernel = weights[0]
        bias = int(sum(w.size for w in weights[1:]))
        macs = node_macs(type(layer).__name__, cfg, node.input_shapes, node.output_shapes)
        full = min(_matrix(kind, kernel).shape)
        base = dict(name=layer.name, kind=kind, rank_before=full, params_before=int(layer.count_params()))
        whole = dict(rank_after=full, energy_kept=1.0, factorized=False, params_after=base["params_before"],
                     macs_before=int(macs or 0), macs_after=int(macs or 0))
        if layer.name in shared or macs is None or None in node.input_shapes[0][1:]:
            records.append(LowRankLayer(**base, **whole, reason="shared layer" if layer.name in shared
                                        else "unknown shapes"))
            continue
        if layer.name + SUFFIX in names:
            records.append(LowRankLayer(**base, **whole, reason=f"a layer named {layer.name + SUFFIX} exists"))
            continue
        plan = _plan(kind, kernel, spec)
        params, pair_macs = _pair_cost(kind, node, cfg, plan, bias)
        if only_if_cheaper and pair_macs >= macs:
            records.append(LowRankLayer(**{**base, **whole, "rank_after": plan.rank, "energy_kept": plan.energy},
                                        reason="the pair would not have fewer MACs"))
            continue
        plans[layer.name] = plan
        records.append(LowRankLayer(**base, rank_after=plan.rank, energy_kept=plan.energy, factorized=True,
                                    params_after=int(params), macs_before=int(macs), macs_after=int(pair_macs)))
    new_model = _build(model, graph, plans)
    return new_model, LowRankReport(str(spec), records)


def _first_config(cfg: dict, kind: str, plan: _Plan, name: str) -> dict:
    first = {**cfg, "name": name, "use_bias": False, "activation": "linear"}
    for k in ("activity_regularizer", "bias_regularizer", "bias_constraint"):
        first.pop(k, None)
    if kind == "dense":
        first["units"] = plan.rank
        return first
    first["filters"] = plan.rank
    if kind == "conv1x1":
        return first  # 1×1 with the original strides and padding
    sy, _ = cfg["strides"]
    dy, _ = cfg["dilation_rate"]
    first.update(kernel_size=(plan.first.shape[0], 1), strides=(sy, 1), dilation_rate=(dy, 1))
    return first


def _second_config(cfg: dict, kind: str, plan: _Plan) -> dict:
    if kind == "dense":
        return dict(cfg)
    if kind == "conv1x1":
        return {**cfg, "strides": (1, 1), "padding": "valid", "dilation_rate": (1, 1)}
    _, sx = cfg["strides"]
    _, dx = cfg["dilation_rate"]
    return {**cfg, "kernel_size": (1, plan.second.shape[1]), "strides": (1, sx), "dilation_rate": (1, dx)}


def _build(model: Any, graph: Any, plans: dict[str, _Plan]) -> Any:
    kmod = keras_module(model)

    def make(node: Node) -> Any:
        layer = node.layer
        cfg = layer.get_config()
        plan = plans.get(layer.name)
        if plan is None:
            return type(layer).from_config(cfg)
        first = type(layer).from_config(_first_config(cfg, plan.kind, plan, layer.name + SUFFIX))
        second = type(layer).from_config(_second_config(cfg, plan.kind, plan))
        return _Pair(first, second)

    new_model, new_layers = rebuild(graph, kmod, make, model.name)
    for node in graph.nodes:
        name = node.layer.name
        weights = node.layer.get_weights()
        new = new_layers[name]
        if isinstance(new, _Pair):
            plan = plans[name]
            new.first.set_weights([plan.first])
            new.second.set_weights([plan.second, *weights[1:]])
        elif weights:
            new.set_weights(weights)
    return new_model


def trainable_copy(model: Any) -> Any:
    """A copy of ``model`` to fine-tune, with BatchNormalization frozen (inference mode, fixed statistics)."""
    from edgepack.optimize.qat import freeze_batchnorm

    copy = copy_model(model)
    for layer in copy.layers:
        freeze_batchnorm(layer)
    return copy
