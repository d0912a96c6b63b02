"""The ptq algorithms' Keras face on tiny Keras 3 models with the defect each fixes: int8 SQNR
against the Keras model with and without the algorithm, and the manifest record."""

from __future__ import annotations

import numpy as np

from edgepack import api
from edgepack.packaging.manifest import read_manifest
from tests.optimize.ptq_builders import biased_depthwise_keras
from tests.optimize.test_ptq_onnx import _sqnr

ALGORITHMS = ("fuse", "equalize", "learned-rounding", "bias-correction", "ranges", "int8-bias-correction")


def _run_int8(bundle, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for sample in x:
        s, z = i["quantization"]
        interp.set_tensor(i["index"], np.clip(np.round(sample[None] / s) + z, -128, 127).astype(np.int8))
        interp.invoke()
        s, z = o["quantization"]
        outs.append((interp.get_tensor(o["index"]).astype(np.float32) - z) * s)
    return np.concatenate(outs)


def _compare_keras(tmp_path, model, x: np.ndarray, algorithm: str):
    """(SQNR with the algorithm, SQNR without any, the manifest of the bundle with it)."""
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "calib.npy", x[:100])
    ref = np.asarray(model(x[100:], training=False))
    others = [a for a in ALGORITHMS if a != algorithm]
    res = {}
    for label, on, off in (("with", [algorithm], others), ("without", [], ["all"])):
        api.convert(model=path, output=tmp_path / label, quantize="int8", calibration=tmp_path / "calib.npy",
                    ptq=on, no_ptq=off)
        res[label] = (_sqnr(ref, _run_int8(tmp_path / label, x[100:])), read_manifest(tmp_path / label))
    return res["with"][0], res["without"][0], res["with"][1]


_compare = _compare_keras


def test_keras_equalization_of_a_100x_channel_imbalance(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3), name="image")
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    out = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(a)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(4)
    gain = np.where(np.arange(8) % 2 == 0, 100.0, 1.0).astype(np.float32)
    w1 = (rng.normal(0, 0.5, (3, 3, 3, 8)) * gain).astype(np.float32)
    model.get_layer("conv1").set_weights([w1, (rng.normal(0, 0.1, 8) * gain).astype(np.float32)])
    model.get_layer("conv2").set_weights([(rng.normal(0, 0.5, (3, 3, 8, 4)) / gain[None, None, :, None]).astype(np.float32),
                                          np.zeros(4, np.float32)])
    x = rng.normal(0, 1, (132, 12, 12, 3)).astype(np.float32)
    eq, plain, m = _compare(tmp_path, model, x, "equalize")
    rec = m.extras["ptq"]["equalize"]
    assert rec["pairs"] == 1 and rec["layers"][0]["layer1"] == "conv1" and rec["layers"][0]["scale_ratio"] > 20
    assert rec["float_max_rel_difference"] < 1e-4
    assert eq > plain + 6, (eq, plain)


def test_keras_bias_correction_of_a_biased_depthwise_rounding(tmp_path):
    model, x = biased_depthwise_keras()
    corrected, plain, m = _compare(tmp_path, model, x, "bias-correction")
    rec = m.extras["ptq"]["bias-correction"]
    assert rec["layers"] == 1 and rec["largest"][0]["layer"] == "depthwise" and rec["max_abs_shift"] > 0.05
    assert corrected > plain + 3, (corrected, plain)
