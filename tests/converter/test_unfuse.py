"""HARD_SWISH and RELU_0_TO_1 (no int16 kernels in TFLite) written as ops that have them, for int16x8."""

from __future__ import annotations

import numpy as np
import pytest


def hard_activations_net(path):
    """conv -> hard-swish (built-in layers: the converter fuses them into HARD_SWISH) -> conv -> ReLU capped at
    1 (RELU, MINIMUM) -> dense; a tf_keras .h5 (safe to load: no Lambda)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inp)
    a = keras.layers.ReLU(max_value=6.0)(keras.layers.Rescaling(1.0, offset=3.0)(x))
    h = keras.layers.Rescaling(1.0 / 6.0)(keras.layers.Multiply()([x, a]))
    g = keras.layers.ReLU(max_value=1.0)(keras.layers.Conv2D(4, 3, padding="same", name="c2")(h))
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(g))
    keras.Model(inp, out).save(path)
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    folder = tmp_path_factory.mktemp("unfuse")
    loaded = load_model(hard_activations_net(folder / "hard.h5"))
    x = (np.random.default_rng(0).normal(size=(64, 8, 8, 3)) * 2).astype(np.float32)
    return loaded, _with_relu_0_to_1(convert_to_tflite(loaded, QuantizeMode.NONE, None)), x


def _with_relu_0_to_1(model: bytes) -> bytes:
    """The RELU made a RELU_0_TO_1 (what onnx2tf writes for a clip to [0, 1]; TF's converter keeps RELU +
    MINIMUM): the MINIMUM(1) after it changes nothing then."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    for oc in obj.operatorCodes:
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == schema.BuiltinOperator.RELU:
            oc.builtinCode = schema.BuiltinOperator.RELU_0_TO_1
            oc.deprecatedBuiltinCode = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(i["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(i["index"], x)
    it.invoke()
    return it.get_tensor(o["index"])


def test_the_written_out_ops_compute_the_fused_ones(net):
    from edgepack.converter.unfuse import unfuse_for_int16
    from edgepack.tflite_model import read_tflite

    _, model, x = net
    before = read_tflite(model).op_counts
    assert before.get("HARD_SWISH") == 1 and before.get("RELU_0_TO_1") == 1  # what the converter fused
    out, counts = unfuse_for_int16(model)
    after = read_tflite(out).op_counts
    assert counts == {"HARD_SWISH": 1, "RELU_0_TO_1": 1}
    assert "HARD_SWISH" not in after and "RELU_0_TO_1" not in after
    assert after["MUL"] == before.get("MUL", 0) + 2 and after["MINIMUM"] == before["MINIMUM"] + 1
    assert after["ADD"] == before.get("ADD", 0) + 1 and after["RELU"] == 1
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-5, atol=1e-5)
    assert unfuse_for_int16(out) == (out, {})  # nothing left to write out: the same bytes


def _int16_dtypes(model: bytes) -> dict[str, str]:
    from edgepack.converter.requantize import model_ops
    from edgepack.tflite_model import read_tflite

    info = read_tflite(model)
    return {kind: info.tensor(outs[0]).dtype for kind, _, _, outs in model_ops(model)}


def _sqnr(got: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((got - ref) ** 2)))


def test_int16x8_of_a_hard_swish_net_is_int16_throughout(net):
    """TF's quantizer refuses int16x8 on a HARD_SWISH model ("not yet supported"); written out, the converter's
    int16x8 is int16 in every op and reads the float model's output to int16 precision."""
    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.request import QuantizeMode
    from edgepack.tflite_model import read_tflite

    loaded, model, x = net
    q = convert_to_tflite(loaded, QuantizeMode.INT16X8, Dataset({"image": x[:48]}))
    assert "HARD_SWISH" not in read_tflite(q).op_counts
    assert {k for k, d in _int16_dtypes(q).items() if d != "int16"} == {"DEQUANTIZE"}  # the float output's
    ref = loaded.run({"image": x[48:]})[0]
    assert _sqnr(_run(q, x[48:]), ref) > 45


def test_the_budget_s_int16_quantization_writes_them_out_too(net):
    """The calibrated model's int16x8 (the base of --fallback int16's candidates) and its op list
    (``for_int16``: what those candidates splice) have the written-out ops, RELU_0_TO_1's included."""
    import tensorflow as tf

    from edgepack.converter.requantize import Calibrated, model_ops

    _, model, x = net
    cal = Calibrated(model, input_type=tf.float32, output_type=tf.float32, samples=lambda: ([s[None]] for s in x[:48]))
    q = cal.quantize(int16=True)
    assert {k for k, d in _int16_dtypes(q).items() if d != "int16"} == {"DEQUANTIZE"}
    assert _sqnr(_run(q, x[48:]), _run(model, x[48:])) > 45
    kinds = [k for k, _, _, _ in cal.for_int16().ops()]
    assert kinds == [k for k, _, _, _ in model_ops(q) if k not in ("QUANTIZE", "DEQUANTIZE")]
    assert "RELU_0_TO_1" not in kinds and cal.for_int16().for_int16().model == cal.for_int16().model
