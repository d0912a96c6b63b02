"""Learned weight rounding (AdaRound's layer objective, Nagel et al. 2020), on the ONNX graph.

Rounding each weight to its nearest int8 level is not what minimizes a layer's output error: the
errors of one output channel's weights add up through the same inputs. For output channel ``c``
with weights ``w`` (``n`` of them), grid ``s = max|w| / 127`` and inputs ``x`` (the layer's input
patches on the calibration data), the error of a rounding ``w_q = s (floor(w / s) + r)``, ``r`` in
{0, 1}^n, is ``E[(w_q - w) . x]^2 = s^2 (r - f)^T C (r - f)`` with ``f`` the fractional parts and
``C = E[x x^T]`` (uncentred: the mean error counts too). AdaRound relaxes ``r`` and anneals it;
here it is found by greedy bit flips from the nearest rounding (each flip the one that lowers the
error most, until none does), all channels of a layer at once.

The rounded weights are written on the grid, and each channel's largest weight keeps its value
(it sits at +-127 steps, where nearest and learned rounding agree), so TensorFlow's converter,
which takes ``max|w| / 127`` as the channel's scale, finds the same grid and rounds nothing:
its int8 weights are exactly the chosen integers. What is left of the rounding's mean error
(``E[w_q - w] . E[x]``) is folded into the bias. Per-channel only (``--per-tensor`` skips it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgepack.optimize.ptq.batchnorm import fold_batchnorms
from edgepack.optimize.ptq.onnx_graph import (
    GraphIndex,
    attr,
    drop_unused_constants,
    session,
    set_initializer,
    unique_name,
)

log = logging.getLogger(__name__)

PATCHES = 4096  # input patches per sample kept for C
MAX_STEPS = 1000  # greedy steps per layer, at most (each flips one weight per channel; it stops when none helps)


def learned_rounding(frac: np.ndarray, cov: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """``r`` (0/1, the shape of ``frac``: channels x n) minimising ``(r - f) C (r - f)`` per channel,
    from the nearest rounding; ``cov`` is n x n (shared) or channels x n x n; ``fixed`` entries keep nearest."""
    r = np.round(frac)
    e = r - frac
    shared = cov.ndim == 2
    ce = e @ cov if shared else np.einsum("cn,cnm->cm", e, cov)
    diag = np.diag(cov)[None, :] if shared else np.einsum("cnn->cn", cov)
    rows = np.arange(len(frac))
    for _ in range(MAX_STEPS):
        d = 1.0 - 2.0 * r  # +1 rounds up, -1 rounds down
        gain = 2.0 * d * ce + diag  # change of the error when flipping each entry
        gain[fixed] = np.inf
        j = gain.argmin(axis=1)
        go = gain[rows, j] < -1e-12
        if not go.any():
            break
        c, jj = rows[go], j[go]
        step = d[c, jj]
        r[c, jj] += step
        ce[c] += step[:, None] * (cov[jj] if shared else cov[c, jj])
    return r


def _patches(x: np.ndarray, node, kernel: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Up to PATCHES input patches (rows) of a Conv's NCHW input, flattened like its weights (ci, kh, kw)."""
    from numpy.lib.stride_tricks import sliding_window_view

    kh, kw = kernel
    pads = attr(node, "pads", [0, 0, 0, 0])
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))[:, ::sh, ::sw, ::dh, ::dw]
    c, oh, ow = win.shape[:3]
    pick = rng.choice(oh * ow, size=min(PATCHES, oh * ow), replace=False)
    chosen = win[:, pick // ow, pick % ow]  # gathers only the chosen windows: c x patches x kh x kw
    return chosen.reshape(c, len(pick), kh * kw).transpose(1, 0, 2)  # patches x ci x k


def _layers(graph, idx: GraphIndex) -> list[Any]:
    out = []
    for node in graph.node:
        w = idx.value(node.input[1]) if node.op_type == "Conv" else None
        if w is None or w.ndim != 4 or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            continue
        group = attr(node, "group", 1)
        if group == 1 or (group == w.shape[0] and w.shape[1] == 1):
            out.append(node)
    return out


def _statistics(proto, layers, feeds, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer: C (n x n, or channels x k x k for depthwise) and the mean patch."""
    sess = session(_with_outputs(proto, [n.input[0] for n in layers]))
    idx = GraphIndex.build(proto.graph)
    kernels = {n.name: tuple(idx.value(n.input[1]).shape[2:]) for n in layers}
    rng = np.random.default_rng(seed)
    acc: list[list[Any]] = [[0.0, 0.0, 0] for _ in layers]
    for feed in feeds:
        for a, node, x in zip(acc, layers, sess.run([n.input[0] for n in layers], feed)):
            p = _patches(np.asarray(x, np.float64), node, kernels[node.name], rng)
            if attr(node, "group", 1) == 1:
                flat = p.reshape(len(p), -1)
                a[0] += flat.T @ flat
                a[1] += flat.sum(axis=0)
            else:
                a[0] += np.einsum("pck,pcl->ckl", p, p)
                a[1] += p.sum(axis=0)
            a[2] += len(p)
    return [(c / n, m / n) for c, m, n in acc]


def _with_outputs(proto, names: list[str]):
    import onnx
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in dict.fromkeys(names) if n not in have)
    return probe


def _round_layer(w: np.ndarray, cov: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(rounded weights on the grid, per-channel mean output shift, share of weights rounded away from nearest)."""
    chans = w.shape[0]
    flat = w.reshape(chans, -1).astype(np.float64)
    peak = np.abs(flat).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    v = flat / scale
    floor = np.floor(v)
    frac = v - floor
    fixed = np.abs(flat) >= peak  # the channel's largest weight: keeps the grid where it is
    r = learned_rounding(frac, cov, fixed)
    q = np.clip(floor + r, -127, 127)
    moved = float(np.mean(q != np.clip(np.round(v), -127, 127)))
    err = (q - v) * scale  # w_q - w
    shift = err @ mean.reshape(-1) if cov.ndim == 2 else np.einsum("ck,ck->c", err, mean)
    return (q * scale).reshape(w.shape).astype(np.float32), shift, moved


def round_onnx(proto, feeds: list[dict[str, np.ndarray]], *, per_tensor: bool = False, seed: int = 0):
    import onnx

    if per_tensor:
        return proto, {"skipped": "per-tensor weights (--per-tensor): the grid is shared by every channel"}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    folded = fold_batchnorms(out.graph)
    idx = GraphIndex.build(out.graph)
    layers = _layers(out.graph, idx)
    record: dict[str, Any] = {"batchnorms_folded": folded, "samples": len(feeds), "layers": 0}
    if not layers:
        return proto, record
    stats = _statistics(out, layers, feeds, seed)
    rows = []
    for node, (cov, mean) in zip(layers, stats):
        w = idx.value(node.input[1])
        rounded, shift, moved = _round_layer(w, cov, mean)
        b = idx.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        names = [unique_name(idx, f"{node.name or 'conv'}_{r}_rounded") for r in ("w", "b")]
        for name, arr in zip(names, (rounded, (b - shift).astype(np.float32))):
            set_initializer(out.graph, name, arr)
            idx.constants[name] = None
        del node.input[1:]
        node.input.extend(names)
        rows.append({"layer": node.name, "moved_from_nearest": round(moved, 4),
                     "max_abs_shift": float(f"{np.abs(shift).max():.4g}")})
    drop_unused_constants(out.graph)
    moved = float(np.mean([r["moved_from_nearest"] for r in rows]))
    record.update(layers=len(rows), mean_moved_from_nearest=round(moved, 4),
                  largest=sorted(rows, key=lambda r: -r["moved_from_nearest"])[:5])
    return out, record
