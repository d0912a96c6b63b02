"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.packaging.manifest import TensorInfo
from edgepack.runtimes.litert import dequantize, quantize
from edgepack.validation import metrics


def test_accuracy_and_agreement_by_hand():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert metrics.accuracy(logits, np.array([1, 0, 0, 0])) == 0.75
    assert metrics.accuracy(logits, np.eye(2)[[1, 0, 1, 1]]) == 0.75  # one-hot labels
    other = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert metrics.top1_agreement(logits, other) == 0.5


def test_error_metrics_by_hand():
    ref = np.array([3.0, 4.0])
    out = np.array([3.0, 3.0])
    assert metrics.max_abs_error(ref, out) == 1.0
    # cos = (9 + 12) / (5 * sqrt(18))
    assert metrics.cosine_similarity(ref, out) == pytest.approx(21 / (5 * math.sqrt(18)))
    # SQNR = 10 log10(25 / 1)
    assert metrics.sqnr_db(ref, out) == pytest.approx(10 * math.log10(25.0))
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0


def test_quantize_round_trip_uses_scale_and_zero_point():
    t = TensorInfo(name="x", tflite_name="x", index=0, shape=[1, 4], dtype="int8", scale=0.5, zero_point=-10)
    q = quantize(np.array([0.0, 1.0, 100.0, -100.0]), t)
    assert q.dtype == np.int8
    assert q.tolist() == [-10, -8, 127, -128]  # clipped at the int8 range
    assert dequantize(q, t).tolist() == [0.0, 1.0, 68.5, -59.0]
    f = TensorInfo(name="y", tflite_name="y", index=1, shape=[1], dtype="float32")
    assert quantize(np.array([1.5]), f).dtype == np.float32
