"""Calibrate once, quantize many times: the calibrated model kept by an int8 conversion."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from edgepack.calibration import Dataset
    from edgepack.converter.formats.detect import load_model
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.request import QuantizeMode
    from tests.conftest import INPUT_SHAPE, save_model

    path = save_model("tf_keras_h5", tmp_path_factory.mktemp("requant"))
    loaded = load_model(path)
    data = Dataset({"image": np.random.default_rng(0).random((40, *INPUT_SHAPE), dtype=np.float32)})
    kept = []
    plain = convert_to_tflite(loaded, QuantizeMode.INT8, data, keep_calibrated=kept.append)
    assert len(kept) == 1
    return kept[0], plain


def test_quantizing_again_gives_the_plain_int8_tensors(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, plain = calibrated
    a, b = read_tflite(plain), read_tflite(cal.quantize())
    assert [(t.name, t.dtype, t.scales) for t in a.tensors] == [(t.name, t.dtype, t.scales) for t in b.tensors]


def test_ranges_replace_the_recorded_min_max(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    t = next(t for t in cal.tensors() if t.max > 0 and t.name != cal.tensors()[0].name)
    before = next(x for x in read_tflite(cal.quantize()).tensors if x.name == t.name)
    after = next(x for x in read_tflite(cal.quantize(ranges={t.name: (t.min, t.max / 4)})).tensors if x.name == t.name)
    assert after.scale == pytest.approx(before.scale / 4, rel=0.02)


def test_denylisted_node_stays_float_and_float_output(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    kind, node, _, _ = next(op for op in cal.ops() if op[0] == "FULLY_CONNECTED")
    info = read_tflite(cal.quantize(denylist=[node]))
    assert next(t for t in info.tensors if t.name == node).dtype == "float32"
    assert "DEQUANTIZE" in info.op_counts
    out = read_tflite(cal.quantize(float_output=True))
    assert out.tensor(out.outputs[0]).dtype == "float32" and out.tensor(out.inputs[0]).dtype == "int8"


def test_int16x8_calibrates_again_in_the_child(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    assert read_tflite(cal.quantize(int16=True)).quantization_mode == "int16x8"
