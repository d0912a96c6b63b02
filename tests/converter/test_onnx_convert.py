"""ONNX -> TFLite through onnx2tf: every mode, the I/O contract, layouts, validation against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.errors import ConversionError, UsageError
from edgepack.packaging.manifest import read_manifest
from tests.converter.onnx_builders import classifier, custom_op, separable_images, shape_flatten, two_in_two_out

MODES = ("int8", "int8-float-io", "int16x8", "float16", "dynamic", "none")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    classifier(d / "classifier.onnx")
    x, y = separable_images(300, 10, seed=0)
    np.save(d / "calib_nchw.npy", x[:150])
    np.savez(d / "heldout_nchw.npz", x=x[150:], y=y[150:])
    np.savez(d / "heldout_nhwc.npz", x=x[150:].transpose(0, 2, 3, 1), y=y[150:])
    return d


@pytest.fixture(scope="module")
def int8_onnx_bundle(onnx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_bundles") / "int8"
    api.convert(model=onnx_dir / "classifier.onnx", output=out, quantize="int8",
                calibration=onnx_dir / "calib_nchw.npy")
    return out


@pytest.mark.parametrize("mode", [m for m in MODES if m != "int8"])
def test_every_quantize_mode_converts_and_reads_back(onnx_dir, tmp_path, mode):
    calib = onnx_dir / "calib_nchw.npy" if mode in ("int8-float-io", "int16x8") else None
    res = api.convert(model=onnx_dir / "classifier.onnx", output=tmp_path / mode, quantize=mode, calibration=calib)
    m = res.manifest
    assert m.quantization.mode == mode  # read back from the flatbuffer, not echoed
    assert m.source.format == "onnx"
    assert [t.name for t in m.inputs] == ["image"] and [t.name for t in m.outputs] == ["logits"]
    assert m.inputs[0].shape == [1, 8, 8, 3]  # NHWC in the bundle, batch fixed to 1
    assert m.inputs[0].source_shape == ["N", 3, 8, 8] and m.inputs[0].source_layout == "NCHW"
    assert m.inputs[0].perm == [0, 2, 3, 1]
    assert m.outputs[0].source_layout is None and m.outputs[0].perm is None


def test_int8_classifier_agrees_with_onnxruntime(onnx_dir, int8_onnx_bundle):
    m = read_manifest(int8_onnx_bundle)
    assert m.quantization.mode == "int8" and m.inputs[0].dtype == "int8"
    report = api.validate(bundle=int8_onnx_bundle, data=onnx_dir / "heldout_nchw.npz",
                          reference=onnx_dir / "classifier.onnx")
    assert report.samples == 150
    assert report.top1_agreement >= 0.99
    assert report.outputs[0].cosine_similarity > 0.99
    # The same data stored NHWC (the TFLite layout) gives the same comparison.
    nhwc = api.validate(bundle=int8_onnx_bundle, data=onnx_dir / "heldout_nhwc.npz",
                        reference=onnx_dir / "classifier.onnx")
    assert nhwc.top1_agreement == report.top1_agreement
    assert nhwc.outputs[0].max_abs_error == pytest.approx(report.outputs[0].max_abs_error)


def test_cli_validate_reference_onnx_and_inspect_mapping(onnx_dir, int8_onnx_bundle):
    runner = CliRunner()
    res = runner.invoke(main, ["validate", str(int8_onnx_bundle), "--data", str(onnx_dir / "heldout_nchw.npz"),
                               "--reference", str(onnx_dir / "classifier.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1_agreement"] >= 0.99
    res = runner.invoke(main, ["inspect", str(int8_onnx_bundle)])
    assert res.exit_code == 0, res.output
    assert "source" in res.stdout and "NCHW" in res.stdout and "Nx3x8x8" in res.stdout
    info = json.loads(runner.invoke(main, ["inspect", str(int8_onnx_bundle), "--json"]).stdout)
    assert info["inputs"][0]["source_layout"] == "NCHW" and info["inputs"][0]["tflite_name"]


def test_multi_input_multi_output_keep_onnx_order_and_values(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.formats.detect import load_model

    path = two_in_two_out(tmp_path / "two.onnx")
    m = api.convert(model=path, output=tmp_path / "b", quantize="none").manifest
    assert [t.name for t in m.inputs] == ["tokens", "image"]
    assert [t.name for t in m.outputs] == ["score", "feature_map"]
    assert m.inputs[0].perm is None and m.inputs[1].perm == [0, 2, 3, 1]
    assert m.outputs[1].source_layout == "NCHW" and m.outputs[1].shape == [1, 6, 6, 5]
    rng = np.random.default_rng(0)
    feeds = {"tokens": rng.random((1, 6), dtype=np.float32), "image": rng.random((1, 2, 6, 6), dtype=np.float32)}
    ref = load_model(path).model(feeds)
    interp = Interpreter(model_path=str(tmp_path / "b" / "model.tflite"))
    interp.allocate_tensors()
    for t in m.inputs:
        interp.set_tensor(t.index, np.transpose(feeds[t.name], t.perm) if t.perm else feeds[t.name])
    interp.invoke()
    got = [interp.get_tensor(t.index) for t in m.outputs]
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(np.transpose(got[1], (0, 3, 1, 2)), ref[1], atol=1e-4)


def test_dynamic_dimensions_need_input_shape(tmp_path):
    path = classifier(tmp_path / "dyn.onnx", hw=("height", "width"))
    with pytest.raises(UsageError, match=r"ONNX input 'image' has a dynamic dimension 'height' at axis 2.*"
                                         r"--input-shape image:1x3xNxN"):
        api.convert(model=path, output=tmp_path / "b0", quantize="none")
    m = api.convert(model=path, output=tmp_path / "b1", quantize="none",
                    input_shapes={"image": (1, 3, 8, 8)}).manifest
    assert m.inputs[0].shape == [1, 8, 8, 3] and m.inputs[0].source_shape == ["N", 3, "height", "width"]
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "b2"), "--quantize", "none",
                               "--input-shape", "image:1x3x8x8"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "b3"), "--quantize", "none",
                               "--input-shape", "nope:1x3x8x8"])
    assert res.exit_code == 2 and "has no input 'nope'" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "b4"), "--input-shape", "image:1x3xAx8"])
    assert res.exit_code == 2 and "expected NAME:DIMxDIM" in res.stderr


def test_shape_arithmetic_is_simplified_without_activated_venv(tmp_path, monkeypatch):
    """onnx2tf would shell out to `onnxsim`; with the venv's bin off PATH it must still simplify."""
    import shutil

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("onnxsim") is None
    path = shape_flatten(tmp_path / "flat.onnx")
    m = api.convert(model=path, output=tmp_path / "b", quantize="none").manifest
    convert = next(s for s in m.stages if s.name == "convert")
    assert convert.detail["simplified_nodes"] < convert.detail["onnx_nodes"]
    assert convert.detail["probe_max_rel_error"] < 1e-4
    assert m.outputs[0].shape == [1, 3]


def test_unsupported_op_lists_type_and_node(tmp_path):
    path = custom_op(tmp_path / "custom.onnx")
    with pytest.raises(ConversionError, match=r"com\.example\.FancyActivation \(node fancy_1\)"):
        api.convert(model=path, output=tmp_path / "b", quantize="none")
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "b"), "--quantize", "none"])
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "FancyActivation" in res.stderr
    assert not (tmp_path / "b").exists()


def test_onnx2tf_sys_exit_becomes_conversion_error(tmp_path):
    """onnx2tf calls sys.exit(1) for a missing file: our process must survive it."""
    from edgepack.converter.onnx.translate import run_onnx2tf

    with pytest.raises(ConversionError, match=r"onnx2tf failed: The specified \*\.onnx file does not exist"):
        run_onnx2tf(tmp_path / "missing.onnx", tmp_path, {}, verbose=False)


def test_onnx2tf_console_output_is_captured(onnx_dir, tmp_path, capfd):
    capfd.readouterr()
    api.convert(model=onnx_dir / "classifier.onnx", output=tmp_path / "b", quantize="none")
    out, err = capfd.readouterr()
    assert out == ""
    assert "onnx2tf" not in err and "Model conversion started" not in err and "\x1b[" not in err


def test_calibration_with_wrong_shape_names_both_layouts(onnx_dir, tmp_path):
    from edgepack.errors import CalibrationError

    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 9, 9), np.float32))
    with pytest.raises(CalibrationError, match=r"fits neither the ONNX layout \(3x8x8\) nor the TFLite layout "
                                               r"\(8x8x3\)"):
        api.convert(model=onnx_dir / "classifier.onnx", output=tmp_path / "b", calibration=tmp_path / "bad.npy")
