"""examples/task_metrics.py: the task metrics the accuracy-budget benchmark uses with --metric."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "examples" / "task_metrics.py"


@pytest.fixture(scope="module")
def tm():
    spec = importlib.util.spec_from_file_location("task_metrics", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yolox(n_img: int = 2) -> np.ndarray:
    """Raw YOLOX head (N, 3549, 6) at 416: two confident, well separated objects per image."""
    raw = np.zeros((n_img, 3549, 6), np.float32)
    raw[..., 2:4] = 0.5  # log-sizes: 1.6 strides
    raw[..., 4:] = 0.01  # background: scores far below 0.1
    for anchor in (100, 2000):  # stride-8 cells (100: row 1, col 48; 2000: row 38, col 24)
        raw[:, anchor, 4], raw[:, anchor, 5] = 0.9, 0.9
    return raw


def test_yolox_f1_is_one_on_itself_and_counts_a_lost_box(tm):
    ref = _yolox()
    assert tm.yolox_f1([ref], [ref]) == 1.0
    lost = ref.copy()
    lost[0, 2000, 4] = 0.05  # one object's objectness collapses: 3 of 4 boxes found
    assert tm.yolox_f1([lost], [ref]) == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    moved = ref.copy()
    moved[:, 100, :2] += 3.0  # three strides off: IoU < 0.5, a false and a missed box per image
    assert tm.yolox_f1([moved], [ref]) == pytest.approx(0.5)


def test_picodet_f1_matches_per_class(tm):
    cells = [(100 * 76, 10), (50 * 38, 10), (25 * 19, 10), (13 * 10, 10)]
    scores = [np.zeros((1, n, k), np.float32) for n, k in cells]
    dists = [np.zeros((1, n, 32), np.float32) for n, _ in cells]
    scores[0][0, 500, 3] = 0.9
    scores[1][0, 300, 7] = 0.8
    ref = scores + dists
    assert tm.picodet_f1(ref, ref) == 1.0
    other_class = [s.copy() for s in scores]
    other_class[1][0, 300, 7], other_class[1][0, 300, 2] = 0.0, 0.8
    assert tm.picodet_f1(other_class + dists, ref) == pytest.approx(0.5)


def test_ctc_string_accuracy_collapses_repeats_and_blanks(tm):
    ref = np.array([[0, 3, 3, 0, 4], [5, 5, 0, 5, 0]], np.float32)
    same = np.array([[3, 0, 0, 4, 4], [5, 0, 5, 5, 0]], np.float32)  # "3 4" and "5 5" again
    assert tm.ctc_string_accuracy([same], [ref]) == 1.0
    assert tm.ctc_string_accuracy([np.array([[3, 3, 3, 3, 4], [5, 5, 5, 5, 5]], np.float32)], [ref]) == 0.5
    scores = np.eye(6, dtype=np.float32)[ref.astype(int)][:, :, None, :]  # (N, steps, 1, classes)
    assert tm.ctc_string_accuracy([scores], [scores]) == 1.0


def test_vad_decision_agreement_counts_flipped_decisions(tm):
    ref = np.array([[0.1], [0.6], [0.9], [0.45]], np.float32)
    assert tm.vad_decision_agreement([ref], [ref]) == 1.0
    moved = np.array([[0.2], [0.55], [0.4], [0.52]], np.float32)  # two cross 0.5
    assert tm.vad_decision_agreement([moved], [ref]) == 0.5
    assert tm.vad_decision_agreement([moved], [ref], threshold=0.15) == 0.75
