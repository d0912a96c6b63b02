"""Reproducible bundles: the same inputs give the same bundle, and `edgepack reproduce` re-runs the
request a manifest recorded and says whether the model came out byte-identical."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from tests.converter.onnx_builders import classifier

_VOLATILE = ("created", "stages")  # timestamps and timings


def _manifest(bundle) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in _VOLATILE}


@pytest.fixture(scope="module")
def onnx_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    model = classifier(d / "model.onnx")
    np.save(d / "calib.npy", np.random.default_rng(0).random((120, 3, 8, 8), dtype=np.float32))
    return model, d / "calib.npy"


@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_same_inputs_give_byte_identical_bundles(kind, keras3_model, calib_npy, onnx_inputs, tmp_path):
    model, calib = (keras3_model, calib_npy) if kind == "keras" else onnx_inputs
    a = api.convert(model=model, output=tmp_path / "a", calibration=calib).bundle
    b = api.convert(model=model, output=tmp_path / "b", calibration=calib).bundle
    assert (a / "model.tflite").read_bytes() == (b / "model.tflite").read_bytes()
    assert _manifest(a) == _manifest(b)


def test_reproduce_reports_byte_identical(keras3_model, calib_npy, tmp_path):
    bundle = api.convert(model=keras3_model, output=tmp_path / "bundle", calibration=calib_npy,
                         calibration_samples=50).bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["request"]["settings"]["calibration"]["samples"] == 50
    assert set(manifest["request"]["files"]) == {"model", "calibration"}
    res = CliRunner().invoke(main, ["reproduce", str(bundle), "-o", str(tmp_path / "again"), "--check", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["identical"] is True and report["differences"] == []


def test_reproduce_names_the_tensors_that_differ(keras3_model, calib_npy, tmp_path):
    bundle = api.convert(model=keras3_model, output=tmp_path / "bundle", calibration=calib_npy).bundle
    # stand-in for a converter that is not bit-exact: the bundle's weights quantized per tensor
    other = api.convert(model=keras3_model, output=tmp_path / "other", calibration=calib_npy,
                        per_tensor=True).bundle
    shutil.copyfile(other / "model.tflite", bundle / "model.tflite")
    manifest = json.loads((bundle / "manifest.json").read_text())  # a consistent bundle: reproduce verifies artifacts
    manifest["artifacts"][0].update(next(a for a in json.loads((other / "manifest.json").read_text())["artifacts"]
                                         if a["role"] == "model"))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = api.reproduce(bundle=bundle, output=tmp_path / "again")
    assert report["identical"] is False
    what = {d["what"] for d in report["differences"]}
    assert what & {"values", "quantization"}, report
    assert any((d["max_abs_diff"] or 0) > 0 for d in report["differences"])  # says by how much
    res = CliRunner().invoke(main, ["reproduce", str(bundle), "-o", str(tmp_path / "again2"), "--check"])
    assert res.exit_code == 1 and "tensors differ" in res.stdout


def test_reproduce_refuses_changed_inputs(keras3_model, calib_npy, tmp_path):
    calib = tmp_path / "calib.npy"
    shutil.copyfile(calib_npy, calib)
    bundle = api.convert(model=keras3_model, output=tmp_path / "bundle", calibration=calib).bundle
    arr = np.load(calib)
    np.save(calib, arr * 2)
    res = CliRunner().invoke(main, ["reproduce", str(bundle), "-o", str(tmp_path / "again")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "calibration file" in lines[0] and "changed" in lines[0]
    assert not (tmp_path / "again").exists()
