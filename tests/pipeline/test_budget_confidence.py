"""Budgets judged with confidence bounds: a classifier whose true agreement is below the target is not
declared met on a small set, and a "met" holds on a disjoint set of the same distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.pipeline.budget import EvalSet
from edgepack.pipeline.budget.scoring import score_outputs
from edgepack.request import BudgetOptions

CLASSES = 10


def _draw(n: int, agreement: float, rng: np.random.Generator) -> tuple[EvalSet, np.ndarray]:
    """n samples of a source classifier and a candidate that agrees with it with probability ``agreement``."""
    ref = rng.normal(size=(n, CLASSES)).astype(np.float32)
    out = ref.copy()
    for i in np.flatnonzero(rng.random(n) >= agreement):  # the top class goes last
        out[i, ref[i].argmax()] = ref[i].min() - 1.0
    ev = EvalSet({"x": np.zeros((n, 1), np.float32)}, [ref], ["logits"], [None], [None])
    return ev, out


def _met(n: int, agreement: float, rng, target: float = 0.96) -> tuple[bool, bool]:
    """(met on the interval's bound, met on the figure alone)."""
    ev, out = _draw(n, agreement, rng)
    s = score_outputs([out], ev)
    budget = BudgetOptions(min_agreement=target)
    return s.meets(budget), s.margin(budget) >= 0


def test_true_agreement_below_target_is_not_met_on_a_small_set():
    rng = np.random.default_rng(0)
    for n in (40, 100):  # the 40 held-out samples; 100, the new default
        draws = [_met(n, 0.93, rng) for _ in range(300)]
        assert not any(bound for bound, _ in draws)
        assert sum(figure for _, figure in draws) > 5  # the figure alone says "met" now and then


def test_met_is_rarely_claimed_when_the_truth_is_just_below_the_target():
    rng = np.random.default_rng(1)
    claims = [_met(300, 0.955, rng)[0] for _ in range(400)]
    assert np.mean(claims) <= 0.05  # the lower bound of a 95% interval: about 2.5% one-sided


def test_a_claim_of_met_holds_on_a_disjoint_set():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(60):
        met, _ = _met(400, 0.985, rng)
        if met:
            ev, out = _draw(5000, 0.985, rng)  # disjoint samples of the same distribution
            assert score_outputs([out], ev).agreement["logits"] >= 0.96
            checked += 1
    assert checked > 10


def test_accuracy_drop_is_judged_on_the_upper_bound():
    rng = np.random.default_rng(3)
    ev, out = _draw(60, 1.0, rng)
    ev.labels = ev.refs[0].argmax(axis=-1)
    s = score_outputs([out], ev)
    assert s.drop_pp == 0
    assert not s.meets(BudgetOptions(max_drop=6))  # 60 agreeing samples show a drop of at most 6.02 pp
    assert s.meets(BudgetOptions(max_drop=6.1))
    assert "accuracy drop 0.00 [-6.02, 6.02], n=60 (pp)" in s.brief(BudgetOptions(max_drop=6.1))


# -- through convert: the line before the search, the held-out part, the records, the advice --------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from tests.conftest import INPUT_SHAPE, build_tf_keras
    from tests.pipeline.test_budget import _outlier_model

    folder = tmp_path_factory.mktemp("confidence")
    rng = np.random.default_rng(0)
    build_tf_keras().save(folder / "tiny.h5")
    np.save(folder / "img.npy", rng.random((300, *INPUT_SHAPE)).astype(np.float32))
    np.save(folder / "x16.npy", rng.normal(size=(300, 16)).astype(np.float32))
    _outlier_model(folder)
    return folder


def test_too_small_to_show_is_said_before_the_search_and_recorded(work):
    out = work / "agree"
    res = CliRunner().invoke(main, ["convert", str(work / "tiny.h5"), "-o", str(out), "--calibration",
                                    str(work / "img.npy"), "--min-agreement", "0.99", "--keep-best"])
    assert res.exit_code == 0, res.output
    # 300 samples: 150 held out (half; 381 would be needed), calibration keeps the other 150
    line = next(ln for ln in res.output.splitlines() if "too small to show" in ln)
    assert "(150 samples)" in line and "needs 381 samples" in line
    manifest = json.loads((out / "manifest.json").read_text())
    b = manifest["budget"]
    assert b["eval_data"]["samples"] == 150 and b["confidence"] == 0.95 and b["budget_met"] is False
    agree = b["chosen"]["metric"]["intervals"]["agreement"]["logits"]
    assert agree["n"] == 150 and agree["method"] == "wilson" and agree["low"] < 0.99
    assert "judged on the interval's bound: agreement logits" in res.output


def test_advice_names_the_int8_input_when_every_op_float_misses(work):
    res = CliRunner().invoke(main, ["convert", str(work / "outlier.h5"), "-o", str(work / "never"), "--calibration",
                                    str(work / "x16.npy"), "--min-sqnr", "70"])
    assert res.exit_code == 1, res.output
    last = [ln for ln in res.output.splitlines() if ln.startswith("error:")][-1]
    assert "the int8 input bounds it: even every op float misses" in last
    assert "--quantize int8-float-io" in last and "--qat" not in last
    assert not (work / "never").exists()


def test_validate_json_says_exact(tmp_path):
    import tf_keras as keras

    inp = keras.Input((8,), name="x")
    keras.Model(inp, keras.layers.ReLU(name="relu")(inp)).save(tmp_path / "relu.h5")
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert CliRunner().invoke(main, ["convert", str(tmp_path / "relu.h5"), "-o", str(tmp_path / "b"),
                                     "--quantize", "none"]).exit_code == 0
    val = CliRunner().invoke(main, ["validate", str(tmp_path / "b"), "--data", str(tmp_path / "x.npy"), "--json"])
    assert val.exit_code == 0, val.output
    (o,) = json.loads(val.output)["outputs"]
    assert o["sqnr_db"] is None and o["exact"] is True
