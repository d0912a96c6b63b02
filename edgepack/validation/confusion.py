"""The confusion matrix of a classifier's top-1 against the labels, accumulated chunk by chunk."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_MATRIX_CLASSES = 64  # past this validation.json keeps per-class counts only (a 1000² matrix reads as noise)


class RunningConfusion:
    """counts[true, predicted] over chunks; labels as class ids or one-hot rows, outside 0..C-1 ignored."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits)
        if logits.ndim < 2 or logits.shape[-1] < 2:
            return  # not a class vector
        classes = logits.shape[-1]
        y = np.asarray(labels)
        if y.ndim == logits.ndim and y.ndim > 1:
            y = y.argmax(axis=-1)
        y = y.reshape(-1).astype(np.int64, copy=False)
        pred = logits.reshape(-1, classes).argmax(axis=-1)
        if len(pred) != len(y):
            return
        if self.counts is None:
            self.counts = np.zeros((classes, classes), dtype=np.int64)
        ok = (y >= 0) & (y < classes)
        np.add.at(self.counts, (y[ok], pred[ok]), 1)

    def to_dict(self, output: str) -> dict[str, Any] | None:
        if self.counts is None or not self.counts.sum():
            return None
        c = self.counts
        out: dict[str, Any] = {"output": output, "classes": int(c.shape[0]),
                               "per_class": [[int(c[i].sum()), int(c[i, i])] for i in range(c.shape[0])]}
        if c.shape[0] <= MAX_MATRIX_CLASSES:
            out["matrix"] = c.tolist()
        return out
