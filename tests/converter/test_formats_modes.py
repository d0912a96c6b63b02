"""Every Keras format × every quantize mode converts, and the manifest tells the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack import api
from edgepack.packaging.manifest import read_manifest, validate_dict
from edgepack.tflite_model import read_tflite
from tests.conftest import save_model

FORMATS = {"keras3": "keras3", "tf_keras": "tf_keras", "tf_keras_h5": "tf_keras_h5", "saved_model": "saved_model"}
MODES = ["int8", "int8-float-io", "int16x8", "float16", "dynamic", "none"]
IO_DTYPE = {"int8": "int8", "int8-float-io": "float32", "int16x8": "float32", "float16": "float32",
            "dynamic": "float32", "none": "float32"}


@pytest.fixture(scope="module")
def source_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {kind: save_model(kind, root / kind) for kind in FORMATS}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("mode", MODES)
def test_format_by_mode(fmt, mode, source_models, calib_npy, tmp_path):
    needs_calib = mode in ("int8", "int8-float-io", "int16x8")
    out = tmp_path / "bundle"
    result = api.convert(model=source_models[fmt], output=out, quantize=mode,
                         calibration=calib_npy if needs_calib else None, calibration_samples=50)
    raw = json.loads((out / "manifest.json").read_text())
    validate_dict(raw)  # the shipped JSON Schema
    m = read_manifest(out)
    assert m == result.manifest
    assert m.source.format == FORMATS[fmt]
    assert m.quantization.mode == mode == read_tflite(out / "model.tflite").quantization_mode
    assert [t.name for t in m.inputs] == ["image"]
    assert [t.name for t in m.outputs] == (["output_0"] if fmt == "saved_model" else ["logits"])
    assert m.inputs[0].dtype == m.outputs[0].dtype == IO_DTYPE[mode]
    assert m.inputs[0].shape[1:] == [8, 8, 1]
    if needs_calib:
        assert m.quantization.calibration.samples == 50
        assert m.quantization.calibration.available == 120
    else:
        assert m.quantization.calibration is None
    art = m.artifact("model")
    assert art.bytes == (out / "model.tflite").stat().st_size
    assert set(m.ops) >= {"CONV_2D", "FULLY_CONNECTED"}
    if mode in ("int8", "int8-float-io"):
        assert m.quantization.granularity == "per-channel"
    if mode == "int8":
        assert m.inputs[0].scale > 0 and m.outputs[0].scale > 0
    else:
        assert m.inputs[0].scale is None
    if mode == "none":
        assert m.quantization.granularity is None


def test_per_tensor_is_read_back(keras3_model, calib_npy, tmp_path):
    m = api.convert(model=keras3_model, output=tmp_path / "b", calibration=calib_npy, per_tensor=True).manifest
    assert m.quantization.granularity == "per-tensor"


def test_calibration_selection_is_seeded(keras3_model, calib_npy, tmp_path):
    a = api.convert(model=keras3_model, output=tmp_path / "a", calibration=calib_npy, calibration_samples=30, seed=1)
    b = api.convert(model=keras3_model, output=tmp_path / "b", calibration=calib_npy, calibration_samples=30, seed=1)
    c = api.convert(model=keras3_model, output=tmp_path / "c", calibration=calib_npy, calibration_samples=30, seed=2)
    ha, hb, hc = (r.manifest.quantization.calibration.sha256 for r in (a, b, c))
    assert ha == hb != hc
    assert (tmp_path / "a/model.tflite").read_bytes() == (tmp_path / "b/model.tflite").read_bytes()


def test_multi_input_multi_output_keep_source_order(tmp_path, calib_npy):
    import keras

    a = keras.Input((4,), name="zeta")
    b = keras.Input((3,), name="alpha")
    x = keras.layers.Concatenate()([a, b])
    m = keras.Model([a, b], [keras.layers.Dense(2, name="zz_out")(x), keras.layers.Dense(5, name="aa_out")(x)])
    m.save(tmp_path / "mimo.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", zeta=rng.random((20, 4), dtype=np.float32),
             alpha=rng.random((20, 3), dtype=np.float32))
    man = api.convert(model=tmp_path / "mimo.keras", output=tmp_path / "b", calibration=tmp_path / "calib.npz").manifest
    assert [t.name for t in man.inputs] == ["zeta", "alpha"]
    assert [t.name for t in man.outputs] == ["zz_out", "aa_out"]
    assert [t.shape[-1] for t in man.inputs] == [4, 3]
    assert [t.shape[-1] for t in man.outputs] == [2, 5]


def test_dynamic_on_a_model_too_small_to_quantize_is_refused(tmp_path):
    import keras

    from edgepack.errors import ConversionError

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save(tmp_path / "small.keras")
    with pytest.raises(ConversionError, match="1024 or more elements"):
        api.convert(model=tmp_path / "small.keras", output=tmp_path / "b", quantize="dynamic")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("mode", ["int8", "int16x8", "none"])
def test_single_op_model_reads_back_its_mode(mode, tmp_path):
    """A graph with no internal activations (one pooling op) is still read back correctly."""
    import keras

    keras.Sequential([keras.Input((4, 4, 2), name="x"), keras.layers.AveragePooling2D(2, name="pool")]).save(
        tmp_path / "pool.keras")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((16, 4, 4, 2), dtype=np.float32))
    calib = tmp_path / "c.npy" if mode != "none" else None
    m = api.convert(model=tmp_path / "pool.keras", output=tmp_path / "b", quantize=mode, calibration=calib).manifest
    assert m.quantization.mode == mode


def test_integer_only_graph_is_not_mistaken_for_quantized(tmp_path):
    """int16 data without quantization scales (an equality test) is plain integer data: mode none."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Equal", ["a", "b"], ["gt"])], "cmp",
                          [helper.make_tensor_value_info("a", TensorProto.INT16, [1, 4]),
                           helper.make_tensor_value_info("b", TensorProto.INT16, [1, 4])],
                          [helper.make_tensor_value_info("gt", TensorProto.BOOL, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cmp.onnx")
    m = api.convert(model=tmp_path / "cmp.onnx", output=tmp_path / "b", quantize="none").manifest
    assert m.quantization.mode == "none"
    assert [t.dtype for t in m.inputs] == ["int16", "int16"]
