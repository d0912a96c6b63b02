"""Structured channel pruning that builds a new, smaller model (not masked weights).

Every tensor's last axis is described by a *layout*: the channel spaces it is made of (a space is
the set of channels one Conv/Dense layer produces; a depthwise multiplier widens it, a Concatenate
strings several together, a Flatten tiles it over positions). Layers that must agree on channels —
residual Add, Multiply, ... — merge their spaces, so a group is pruned consistently. Anything edgepack
does not understand, the model's inputs and its outputs freeze the spaces they touch: those keep all
channels. Filters are ranked by the L1 or L2 norm of their weights (summed over a group's producers,
each normalised by its mean), the weakest are removed, and every consumer downstream (BatchNorm,
depthwise, the next conv/dense) loses the matching input channels.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.errors import UsageError
from edgepack.optimize.graph import Graph, Node, TensorKey, keras_module, read_graph, rebuild, selected
from edgepack.request import PRUNE_NORMS, valid_ratio

log = logging.getLogger(__name__)

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D"}
PASS_THROUGH = {"Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                "GaussianNoise", "GaussianDropout", "AlphaDropout", "MaxPooling1D", "MaxPooling2D",
                "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D",
                "Cropping2D", "UpSampling1D", "UpSampling2D", "Identity", "ActivityRegularization"}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclass
class Space:
    size: int
    producers: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    frozen: bool = False


@dataclass(frozen=True)
class Layout:
    segments: tuple[tuple[int, int], ...]  # (space id, multiplier)
    tile: int = 1


@dataclass(frozen=True)
class PruneReport:
    ratio: float
    norm: str
    layers: dict[str, tuple[int, int]]  # producer layer -> (channels before, after)
    groups: int  # channel groups tied across several producers
    round_to: int = 1  # kept channel counts are multiples of this
    group_ratios: tuple[tuple[str, float], ...] = ()  # (layer pattern, ratio) overriding ``ratio``

    def to_dict(self) -> dict[str, Any]:
        extra = {"group_ratios": dict(self.group_ratios)} if self.group_ratios else {}
        return {"ratio": self.ratio, **extra, "norm": self.norm, "round_to": self.round_to, "tied_groups": self.groups,
                "layers": [{"name": k, "channels_before": b, "channels_after": a} for k, (b, a) in self.layers.items()]}


class _Planner:
    """Assigns layouts to tensors, unions tied spaces, then picks the channels to keep."""

    def __init__(self, graph: Graph, norm: str) -> None:
        self.graph, self.norm = graph, norm
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.layouts: dict[TensorKey, Layout] = {}

    # -- union-find -------------------------------------------------------------------------
    def new_space(self, size: int, frozen: bool = False) -> int:
        self.spaces.append(Space(size, frozen=frozen))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.spaces[ra].frozen |= self.spaces[rb].frozen
            self.spaces[ra].producers += self.spaces[rb].producers
            sa, sb = self.spaces[ra].scores, self.spaces[rb].scores
            self.spaces[ra].scores = sb if sa is None else (sa if sb is None else sa + sb)

    def freeze(self, layout: Layout | None) -> None:
        for s, _ in (layout.segments if layout else ()):
            self.spaces[self.find(s)].frozen = True

    def fresh(self, shape: tuple, frozen: bool = True) -> Layout:
        return Layout(((self.new_space(int(shape[-1] or 0), frozen), 1),))

    # -- layouts ------------------------------------------------------------------------------
    def plan(self, shared: set[str]) -> None:
        for key, (_, shape, _) in zip(self.graph.inputs, self.graph.input_specs):
            self.layouts[key] = self.fresh((None, *shape))
        for node in self.graph.nodes:
            ins = [self.layouts.get(k) for k in node.inputs]
            outs = self._node_layouts(node, ins, node.layer.name in shared)
            for key, lay in zip(node.outputs, outs):
                self.layouts[key] = lay
        for key in self.graph.outputs:
            self.freeze(self.layouts.get(key))

    def _node_layouts(self, node: Node, ins: list[Layout | None], shared: bool) -> list[Layout]:
        layer, kind = node.layer, type(node.layer).__name__
        cfg = layer.get_config()
        channels_last = cfg.get("data_format", "channels_last") in ("channels_last", None)
        if shared or not channels_last or len(node.output_shapes) != 1 or any(i is None for i in ins):
            return self._opaque(node, ins)
        if kind in PRODUCERS and cfg.get("groups", 1) == 1 and len(ins) == 1:
            space = self.new_space(int(node.output_shapes[0][-1]))
            self.spaces[space].producers.append(layer.name)
            self.spaces[space].scores = _normalised(_filter_norms(layer, kind, self.norm))
            return [Layout(((space, 1),))]
        if kind == "DepthwiseConv2D" and len(ins) == 1 and ins[0].tile == 1:
            m = int(cfg.get("depth_multiplier", 1))
            if len(ins[0].segments) == 1:
                self._add_scores(ins[0].segments[0], _depthwise_norms(layer, self.norm))
            return [Layout(tuple((s, k * m) for s, k in ins[0].segments))]
        if kind == "BatchNormalization" and cfg.get("axis") in (-1, [-1], len(node.input_shapes[0]) - 1,
                                                                [len(node.input_shapes[0]) - 1]):
            return [ins[0]]
        if kind in PASS_THROUGH and len(ins) == 1:
            return [ins[0]]
        if kind in MERGES and len(ins) > 1:
            return self._merge(node, ins)
        if kind == "Concatenate" and cfg.get("axis") in (-1, len(node.output_shapes[0]) - 1) \
                and all(i.tile == 1 for i in ins):
            return [Layout(tuple(seg for lay in ins for seg in lay.segments))]
        if kind == "Flatten" and len(ins) == 1 and ins[0].tile == 1 and None not in node.input_shapes[0][1:]:
            return [Layout(ins[0].segments, int(np.prod(node.input_shapes[0][1:-1], dtype=np.int64)))]
        return self._opaque(node, ins)

    def _opaque(self, node: Node, ins: list[Layout | None]) -> list[Layout]:
        for lay in ins:
            self.freeze(lay)
        return [self.fresh(s) for s in node.output_shapes]

    def _merge(self, node: Node, ins: list[Layout]) -> list[Layout]:
        first = ins[0]
        same = all(len(i.segments) == len(first.segments) and i.tile == first.tile
                   and all(a[1] == b[1] for a, b in zip(i.segments, first.segments)) for i in ins)
        widths = {s[-1] for s in node.input_shapes}
        if not same or len(widths) != 1:
            return self._opaque(node, ins)
        for lay in ins[1:]:
            for (a, _), (b, _) in zip(first.segments, lay.segments):
                self.union(a, b)
        return [first]

    def _add_scores(self, seg: tuple[int, int], norms: np.ndarray) -> None:
        space, mult = seg
        root = self.spaces[self.find(space)]
        if mult == 1 and root.scores is not None and len(norms) == root.size:
            root.scores = root.scores + _normalised(norms)

    # -- choice -------------------------------------------------------------------------------
    def choose(self, ratio: float, round_to: int = 1,
               group_ratios: tuple[tuple[str, float], ...] = ()) -> dict[int, np.ndarray]:
        """Sorted channel indices to keep, per root space that is pruned; a space whose producing layer
        matches a ``group_ratios`` pattern (first match) loses that share instead of ``ratio``.

        With ``round_to`` > 1 the kept count is the nearest multiple of it (at least one multiple, at most
        the whole space), so kernels that work in SIMD blocks of 8 or 16 channels waste no lanes."""
        keep: dict[int, np.ndarray] = {}
        for sid in range(len(self.spaces)):
            root = self.find(sid)
            sp = self.spaces[root]
            if root != sid or sp.frozen or sp.scores is None or sp.size < 2:
                continue
            share = next((r for pat, r in group_ratios if any(fnmatch.fnmatchcase(p, pat) for p in sp.producers)),
                         ratio)
            n = max(1, int(round(sp.size * (1.0 - share))))
            if round_to > 1:
                n = min(sp.size, max(round_to, round_to * int(round(n / round_to))))
            if n < sp.size:
                keep[root] = np.sort(np.argsort(-sp.scores, kind="stable")[:n])
        return keep

    def indices(self, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray | None:
        """Kept positions along a tensor's last axis, or None when it keeps everything."""
        parts, offset, changed = [], 0, False
        for s, mult in layout.segments:
            root = self.find(s)
            size = self.spaces[root].size
            chans = keep.get(root)
            changed |= chans is not None
            chans = np.arange(size) if chans is None else chans
            parts.append(offset + (chans[:, None] * mult + np.arange(mult)[None, :]).reshape(-1))
            offset += size * mult
        if not changed:
            return None
        one = np.concatenate(parts)
        return (np.arange(layout.tile)[:, None] * offset + one[None, :]).reshape(-1)


def _norm(w: np.ndarray, axes: tuple[int, ...], norm: str) -> np.ndarray:
    return np.abs(w).sum(axis=axes) if norm == "l1" else np.sqrt(np.square(w).sum(axis=axes))


def _filter_norms(layer: Any, kind: str, norm: str) -> np.ndarray:
    weights = layer.get_weights()
    if kind.startswith("Separable"):  # the pointwise kernel makes the output channels
        w = weights[1]
    else:
        w = weights[0]
    return _norm(w, tuple(range(w.ndim - 1)), norm)


def _depthwise_norms(layer: Any, norm: str) -> np.ndarray:
    w = layer.get_weights()[0]  # (kh, kw, channels, multiplier)
    return _norm(w, (0, 1, 3), norm)


def _normalised(x: np.ndarray) -> np.ndarray:
    mean = float(np.mean(x))
    return x / mean if mean > 0 else np.ones_like(x)


def prune_channels(model: Any, ratio: float, *, norm: str = "l1", round_to: int = 1, prune_layers: tuple[str, ...] = (),
                   keep_layers: tuple[str, ...] = (), group_ratios: tuple[tuple[str, float], ...] = ()
                   ) -> tuple[Any, PruneReport]:
    """A new model (same Keras flavour) with ``ratio`` of the prunable channels removed (per layer group
    ``group_ratios``' share where a pattern matches)."""
    if not valid_ratio(ratio) or not all(valid_ratio(r) for _, r in group_ratios):
        raise UsageError(f"--prune channels:{ratio}: the ratio must be in [0, 1)", hint="e.g. channels:0.5")
    if norm not in PRUNE_NORMS:
        raise UsageError(f"--prune-norm {norm}: use {' or '.join(PRUNE_NORMS)}")
    graph = read_graph(model)
    shared = {name for name, n in graph.calls_per_layer().items() if n > 1}
    planner = _Planner(graph, norm)
    planner.plan(shared)
    for sp in planner.spaces:
        if sp.producers and not all(selected(p, prune_layers, keep_layers) for p in sp.producers):
            sp.frozen = True
    for sid, sp in enumerate(planner.spaces):  # frozen flags set after unions live on the roots
        if sp.frozen:
            planner.spaces[planner.find(sid)].frozen = True
    keep = planner.choose(ratio, round_to, group_ratios)
    new_model, new_layers = _build(model, graph, planner, keep)
    layers: dict[str, tuple[int, int]] = {}
    tied = 0
    for sid, sp in enumerate(planner.spaces):
        if planner.find(sid) != sid or not sp.producers:
            continue
        tied += len(sp.producers) > 1
        after = len(keep[sid]) if sid in keep else sp.size
        for p in sp.producers:
            layers[p] = (sp.size, after)
    order = [n.layer.name for n in graph.nodes]
    layers = dict(sorted(layers.items(), key=lambda kv: order.index(kv[0])))
    return new_model, PruneReport(ratio, norm, layers, tied, round_to, tuple(group_ratios))


def _build(model: Any, graph: Graph, planner: _Planner, keep: dict[int, np.ndarray]) -> tuple[Any, dict]:
    kmod = keras_module(model)
    plans: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}

    def make(node: Node) -> Any:
        layer = node.layer
        cfg = layer.get_config()
        in_idx = planner.indices(planner.layouts[node.inputs[0]], keep) if len(node.inputs) == 1 else None
        out_lay = planner.layouts.get(node.outputs[0]) if len(node.outputs) == 1 else None
        out_idx = planner.indices(out_lay, keep) if out_lay is not None else None
        plans[layer.name] = (in_idx, out_idx)
        if out_idx is not None and type(layer).__name__ in PRODUCERS:
            cfg["units" if "units" in cfg else "filters"] = len(out_idx)
        return type(layer).from_config(cfg)

    new_model, new_layers = rebuild(graph, kmod, make, model.name)
    for node in graph.nodes:
        name = node.layer.name
        in_idx, out_idx = plans[name]
        weights = _slice_weights(node.layer, node.layer.get_weights(), in_idx, out_idx)
        new_layers[name].set_weights(weights)
    return new_model, new_layers


def _slice_weights(layer: Any, weights: list[np.ndarray], in_idx: np.ndarray | None,
                   out_idx: np.ndarray | None) -> list[np.ndarray]:
    kind = type(layer).__name__
    if in_idx is None and out_idx is None:
        return weights
    if kind in PRODUCERS and kind.startswith("Separable"):
        dw, pw, *rest = weights
        mult = dw.shape[-1]
        if in_idx is not None:
            dw = dw[..., in_idx, :]
            pw = pw[..., (in_idx[:, None] * mult + np.arange(mult)).reshape(-1), :]
        if out_idx is not None:
            pw = pw[..., out_idx]
            rest = [b[out_idx] for b in rest]
        return [dw, pw, *rest]
    if kind in PRODUCERS:
        kernel, *rest = weights
        if in_idx is not None:
            kernel = np.take(kernel, in_idx, axis=-2)
        if out_idx is not None:
            kernel = kernel[..., out_idx]
            rest = [b[out_idx] for b in rest]
        return [kernel, *rest]
    if kind == "DepthwiseConv2D":
        kernel, *rest = weights
        if in_idx is not None:
            kernel = kernel[:, :, in_idx, :]
        if out_idx is not None:
            rest = [b[out_idx] for b in rest]
        return [kernel, *rest]
    if kind == "BatchNormalization":
        return [w[in_idx] for w in weights] if in_idx is not None else weights
    return weights
