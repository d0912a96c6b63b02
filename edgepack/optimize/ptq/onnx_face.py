"""The ONNX face of the ptq algorithms: run them in order on a copy of the graph, each checked.

Rewrites that must not change the float function (fusion, equalization) are checked with
onnxruntime on calibration samples, graph before against graph after, and undone when they differ;
bias correction changes it on purpose (by the expected int8 weight error) and records how much.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepack.calibration import Dataset
from edgepack.optimize.ptq.onnx_graph import session

log = logging.getLogger(__name__)

# relative difference (to the output's magnitude) beyond which a float-exact rewrite is undone
EXACT = 1e-4
CHECK_SAMPLES = 4
SAMPLES = 32  # calibration samples the data-driven algorithms read


def onnx_samples(model, calibration: Dataset, count: int | None = None) -> list[dict[str, np.ndarray]] | None:
    """Up to ``count`` calibration samples in the ONNX model's layout (one per feed), or None when
    the data fits neither the ONNX layout nor its channels-last transpose."""
    shapes = model.conversion_shapes()
    dtypes = {t.name: t.dtype for t in model.inputs}
    out = []
    for sample in calibration.samples(dtypes):
        feed = {}
        for name, arr in sample.items():
            want = tuple(shapes[name][1:])
            if arr.shape[1:] == want:
                feed[name] = arr
            elif arr.ndim == 4 and arr.transpose(0, 3, 1, 2).shape[1:] == want:
                feed[name] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
            else:
                return None
        out.append(feed)
        if count is not None and len(out) >= count:
            break
    return out


def max_rel_difference(before, after, feeds: list[dict[str, np.ndarray]]) -> float:
    a, b = session(before), session(after)
    worst = 0.0
    for feed in feeds:
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            scale = max(float(np.abs(x).max()), 1e-12)
            worst = max(worst, float(np.abs(x - y).max()) / scale)
    return worst


def _algorithms(per_tensor: bool) -> dict[str, tuple[Callable[..., tuple[Any, dict]], bool]]:
    """name -> (rewrite(proto, feeds) -> (proto, record), float-exact)"""
    from edgepack.optimize.ptq import bias_correction, equalize, fuse, rounding, split

    return {"fuse": (lambda proto, feeds: fuse.fuse_hard_swish(proto), True),
            "equalize": (lambda proto, feeds: equalize.equalize_onnx(proto), True),
            "split": (lambda proto, feeds: split.split_onnx(proto, feeds[:split.SAMPLES]), True),
            "learned-rounding": (lambda proto, feeds: rounding.round_onnx(proto, feeds, per_tensor=per_tensor), False),
            "bias-correction": (lambda proto, feeds: bias_correction.correct_onnx(proto, feeds, per_tensor=per_tensor),
                                False)}


def apply(model, wanted: list[str], calibration: Dataset, *, per_tensor: bool = False) -> tuple[Any, dict[str, Any]]:
    """The rewritten proto (``model.proto`` itself when nothing changed) and a record per algorithm."""
    feeds = onnx_samples(model, calibration, count=max(CHECK_SAMPLES, SAMPLES))
    proto, record = model.proto, {}
    for name, (rewrite, exact) in _algorithms(per_tensor).items():
        if name not in wanted:
            continue
        if feeds is None:
            record[name] = {"skipped": "calibration data fits neither the ONNX layout nor channels-last"}
            continue
        new, rec = rewrite(proto, feeds)
        if new is not proto and exact:
            diff = max_rel_difference(proto, new, feeds[:CHECK_SAMPLES])
            rec["float_max_rel_difference"] = float(f"{diff:.3g}")
            if diff > EXACT:
                log.warning("ptq %s changed the float model's outputs by %.3g (relative); not applied", name, diff)
                rec["skipped"] = f"the float outputs differ by {diff:.3g} (relative) after the rewrite"
                new = proto
        record[name] = rec
        proto = new
    return proto, record
