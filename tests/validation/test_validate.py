"""`edgepack validate`: real runtimes, real reference models, real budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.errors import ValidationFailed
from tests.conftest import CLASSES, INPUT_SHAPE


@pytest.fixture(scope="module")
def labelled_by_model(tmp_path_factory, keras3_model):
    """Held-out data whose labels are the float model's own predictions (reference accuracy = 100%)."""
    import keras

    d = tmp_path_factory.mktemp("val")
    x = np.random.default_rng(1).random((80, *INPUT_SHAPE), dtype=np.float32)
    y = keras.saving.load_model(keras3_model).predict(x, verbose=0).argmax(-1)
    np.savez(d / "data.npz", x=x, y=y)
    return d / "data.npz"


def test_validate_int8_bundle_against_source(int8_bundle, labelled_by_model):
    report = api.validate(bundle=int8_bundle, data=labelled_by_model, max_drop=50)
    assert report.samples == 80
    assert report.accuracy_reference == 1.0
    assert report.accuracy_bundle == pytest.approx(report.top1_agreement)
    assert report.top1_agreement > 0.8
    (out,) = report.outputs
    assert out.name == "logits"
    assert 0 < out.max_abs_error < 1.0
    assert out.cosine_similarity > 0.98
    assert out.sqnr_db > 15
    stored = json.loads((int8_bundle / "validation.json").read_text())
    assert stored["top1_agreement"] == report.top1_agreement
    assert stored["passed"] is True


def test_budget_exceeded_exits_1_and_still_writes_report(int8_bundle, tmp_path):
    """Labels from a *different* model: the reference scores 100%, the bundle far less."""
    import keras

    keras.utils.set_random_seed(7)
    other = keras.Sequential([keras.Input(INPUT_SHAPE, name="image"), keras.layers.Flatten(),
                              keras.layers.Dense(CLASSES, name="logits")])
    other.save(tmp_path / "other.keras")
    x = np.random.default_rng(2).random((60, *INPUT_SHAPE), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=other.predict(x, verbose=0).argmax(-1))
    r = CliRunner().invoke(main, ["validate", str(int8_bundle), "--data", str(tmp_path / "d.npz"),
                                  "--reference", str(tmp_path / "other.keras"), "--max-drop", "1"])
    assert r.exit_code == 1, r.output
    assert "accuracy dropped" in r.stderr and "over --max-drop 1" in r.stderr
    stored = json.loads((int8_bundle / "validation.json").read_text())
    assert stored["passed"] is False and stored["accuracy_reference"] == 1.0
    with pytest.raises(ValidationFailed):
        api.validate(bundle=int8_bundle, data=tmp_path / "d.npz", reference=tmp_path / "other.keras", max_drop=1)


def test_tflite_runtime_matches_litert(int8_bundle, labelled_by_model):
    a = api.validate(bundle=int8_bundle, data=labelled_by_model)
    b = api.validate(bundle=int8_bundle, data=labelled_by_model, runtime="tflite-runtime")
    assert b.runtime == "tflite-runtime"
    assert a.outputs[0].max_abs_error == pytest.approx(b.outputs[0].max_abs_error, abs=1e-6)
    assert a.top1_agreement == b.top1_agreement


def test_float_bundle_matches_reference_closely(keras3_model, labelled_by_model, tmp_path):
    api.convert(model=keras3_model, output=tmp_path / "f", quantize="none")
    report = api.validate(bundle=tmp_path / "f", data=labelled_by_model, max_drop=5)
    assert report.top1_agreement == 1.0
    assert report.outputs[0].max_abs_error < 1e-4
    assert report.passed
    # a drop is judged on its interval's upper bound: 80 agreeing samples show at most 4.58 pp, not 0
    assert report.intervals["accuracy_drop_pp"]["high"] == pytest.approx(4.582, abs=1e-3)
    assert report.intervals["top1_agreement"]["low"] == pytest.approx(80 / (80 + 1.959964 ** 2), abs=1e-4)
    strict = api.validate(bundle=tmp_path / "f", data=labelled_by_model, max_drop=0, check=False)
    assert not strict.passed and "upper bound 4.58 pp on 80 samples" in strict.failures[0]


def test_validate_without_reference_when_source_moved(keras3_model, labelled_by_model, tmp_path, calib_npy):
    import shutil

    src = tmp_path / "m.keras"
    shutil.copy(keras3_model, src)
    api.convert(model=src, output=tmp_path / "b", calibration=calib_npy)
    src.unlink()
    report = api.validate(bundle=tmp_path / "b", data=labelled_by_model)
    assert report.reference is None and report.top1_agreement is None
    assert report.accuracy_bundle is not None
    r = CliRunner().invoke(main, ["validate", str(tmp_path / "b"), "--data", str(labelled_by_model), "--max-drop", "1"])
    assert r.exit_code == 1 and "needs labelled data" in r.stderr


def test_validate_errors(int8_bundle, tmp_path):
    r = CliRunner().invoke(main, ["validate", str(tmp_path), "--data", "x.npz"])
    assert r.exit_code == 1 and "no manifest.json" in r.stderr
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    r = CliRunner().invoke(main, ["validate", str(int8_bundle), "--data", str(tmp_path / "bad.npy")])
    assert r.exit_code == 1 and "does not match model input" in r.stderr
    assert "Traceback" not in r.output


def test_table_output(int8_bundle, labelled_by_model):
    r = CliRunner().invoke(main, ["validate", str(int8_bundle), "--data", str(labelled_by_model)])
    assert r.exit_code == 0, r.output
    for frag in ("top-1 agreement", "SQNR", "logits", "PASS"):
        assert frag in r.stdout
