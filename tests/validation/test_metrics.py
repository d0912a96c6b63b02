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


def test_running_metrics_over_chunks_equal_the_whole():
    """validate streams: metrics summed chunk by chunk must equal those of the whole arrays."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(203, 10))
    out = ref + rng.normal(scale=0.1, size=ref.shape)
    labels = rng.integers(0, 10, 203)
    acc, agree, comp = metrics.RunningAccuracy(), metrics.RunningAgreement(), metrics.RunningComparison()
    for start in range(0, 203, 64):
        s = slice(start, start + 64)
        acc.update(out[s], labels[s])
        agree.update(ref[s], out[s])
        comp.update(ref[s], out[s])
    assert acc.result() == pytest.approx(np.mean(out.argmax(-1) == labels))
    assert agree.result() == pytest.approx(np.mean(out.argmax(-1) == ref.argmax(-1)))
    assert comp.max_abs == pytest.approx(np.max(np.abs(ref - out)))
    r, o = ref.ravel(), out.ravel()
    assert comp.cosine == pytest.approx(np.dot(r, o) / np.linalg.norm(r) / np.linalg.norm(o))
    assert comp.sqnr_db == pytest.approx(10 * math.log10(np.sum(r ** 2) / np.sum((r - o) ** 2)))
    assert metrics.RunningAccuracy().result() is None  # no samples: no number, not 0


# -- per slice ---------------------------------------------------------------------------------------
def test_feature_axis_rule():
    from edgepack.validation.metrics import feature_axis

    assert feature_axis((1, 3549, 6)) == 2  # YOLOX: anchors x (4 + 1 + K)
    assert feature_axis((1, 84, 8400)) == 1  # YOLOv8: (4 + 80) x anchors
    assert feature_axis((1, 3, 224, 224)) == 1  # image channels
    assert feature_axis((8, 7)) == 1  # a small regression / class head
    assert feature_axis((8, 1000)) is None  # 1000 classes: one slice
    assert feature_axis((8, 1)) is None
    assert feature_axis((1, 3549, 6), override=1) == 1
    assert feature_axis((1, 3549, 6), override=-1) == 2
    assert feature_axis((1, 3549, 6), override=0) is None  # never the batch axis


def test_worst_slice_is_not_hidden_by_a_wide_slice():
    from edgepack.validation.metrics import slice_sqnr, sqnr_db

    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (1, 4, 500)), rng.uniform(0, 0.02, (1, 2, 500))], axis=1)
    out = ref.copy()
    out[:, :4] += rng.normal(0, 0.5, (1, 4, 500))  # boxes: fine
    out[:, 4:] = np.round(out[:, 4:] / 0.0138) * 0.0138  # scores: two levels
    assert sqnr_db(ref, out) > 40
    worst, where = slice_sqnr(ref, out, 1)
    assert worst < 10 and where in (4, 5)
    whole, none = slice_sqnr(ref, out, None)
    assert whole == pytest.approx(sqnr_db(ref, out)) and none is None


def test_slices_without_signal_are_left_out():
    from edgepack.validation.metrics import RunningSliceSqnr

    ref = np.zeros((4, 3))
    ref[:, 0] = 1.0
    s = RunningSliceSqnr(1)
    s.update(ref, ref + np.array([0.01, 0.5, 0.0]))
    assert s.per_slice()[1:] == [None, None]
    assert s.worst[1] == 0
