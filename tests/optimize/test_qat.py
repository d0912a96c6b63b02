"""QAT (alone and sparsity-preserving) on a Keras 3 model, through the whole pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack import api
from edgepack.tflite_model import read_tflite


def test_sparsity_then_qat_on_keras3_gives_int8(tmp_path, keras3_model, calib_npy, labelled_npz):
    out = tmp_path / "bundle"
    result = api.convert(model=keras3_model, output=out, calibration=calib_npy, prune="sparsity:0.6", qat=True,
                         train_data=labelled_npz, epochs=2)
    # the mode is read back from the produced model: QAT must still give a full-integer int8 model
    assert result.manifest.quantization.mode == "int8"
    assert read_tflite(out / "model.tflite").quantization_mode == "int8"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["format"] == "keras3"
    opt = manifest["extras"]["optimize"]
    assert opt["keras_bridge"]["max_abs_diff"] < 1e-5
    assert 0.55 <= opt["sparsity"]["achieved_overall"] <= 0.65
    qat = opt["qat"]
    assert qat["scheme"] == "default_8bit_prune_preserve" and qat["unquantized_layers"] == []
    assert 1 <= qat["epochs"] <= 2 and qat["final_loss"] > 0 and "accuracy_original" in qat
    assert opt["after"]["zip_bytes"] < opt["before"]["zip_bytes"]  # the zeros survived QAT and conversion


def test_unquantizable_layers_are_named():
    import tf_keras

    from edgepack.optimize.qat import unsupported_layers

    i = tf_keras.Input((4, 4, 2))
    x = tf_keras.layers.Conv2D(2, 1, name="conv")(i)
    x = tf_keras.layers.LayerNormalization(name="ln")(x)
    model = tf_keras.Model(i, tf_keras.layers.Dense(2, name="out")(tf_keras.layers.Flatten()(x)))
    assert unsupported_layers(model) == ["ln (LayerNormalization)"]


def test_channel_pruning_then_qat_gives_a_smaller_int8_model(tmp_path, keras3_model, calib_npy, labelled_npz):
    out = tmp_path / "bundle"
    api.convert(model=keras3_model, output=out, calibration=calib_npy, prune="channels:0.5", qat=True,
                train_data=labelled_npz, epochs=1)
    assert read_tflite(out / "model.tflite").quantization_mode == "int8"
    opt = json.loads((out / "manifest.json").read_text())["extras"]["optimize"]
    assert opt["after"]["params"] < opt["before"]["params"] and opt["after"]["macs"] <= 0.55 * opt["before"]["macs"]
    assert opt["after"]["tflite_bytes"] == (out / "model.tflite").stat().st_size < opt["before"]["tflite_bytes"]
    assert opt["channels"]["finetune"]["epochs"] == 1 and opt["qat"]["epochs"] == 1
    assert opt["qat"]["unquantized_layers"] == []


def test_batchnorm_after_a_conv_is_folded_not_reported():
    import tf_keras

    from edgepack.optimize.qat import unsupported_layers

    i = tf_keras.Input((4, 4, 2))
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(i)
    x = tf_keras.layers.BatchNormalization(name="bn_folded")(x)
    x = tf_keras.layers.ReLU(6.0, name="relu")(x)
    x = tf_keras.layers.BatchNormalization(name="bn_alone")(x)  # after an activation: nothing to fold into
    model = tf_keras.Model(i, tf_keras.layers.Dense(2, name="out")(tf_keras.layers.Flatten()(x)))
    assert unsupported_layers(model) == ["bn_alone (BatchNormalization)"]


def test_per_tensor_qat_trains_and_converts_per_tensor(tmp_path, keras3_model, calib_npy, labelled_npz):
    out = tmp_path / "bundle"
    result = api.convert(model=keras3_model, output=out, calibration=calib_npy, qat=True, per_tensor=True,
                         train_data=labelled_npz, epochs=1)
    assert result.manifest.quantization.granularity == "per-tensor"
    weights = [t for t in read_tflite(out / "model.tflite").tensors if t.constant and t.dtype == "int8"]
    assert weights and all(len(t.scales) == 1 for t in weights)
    qat = result.manifest.extras["optimize"]["qat"]
    assert qat["scheme"] == "default_8bit_per_tensor" and qat["learning_rate"] == 1e-4


def test_per_tensor_cannot_combine_with_sparsity_preserving_qat(tmp_path, keras3_model, calib_npy, labelled_npz):
    from edgepack.errors import UsageError

    with pytest.raises(UsageError, match="--per-tensor cannot be combined"):
        api.convert(model=keras3_model, output=tmp_path / "b", calibration=calib_npy, qat=True, per_tensor=True,
                    prune="2:4", train_data=labelled_npz, epochs=1)
    assert not (tmp_path / "b").exists()


def test_ranges_are_calibrated_before_qat():
    """tfmot starts ranges at [-6, 6] (input layer: [0, 0]); calibration sets them from the data."""
    import tf_keras

    from edgepack.optimize.finetune import TrainingData
    from edgepack.optimize.qat import calibrate_ranges, import_tfmot

    qk = import_tfmot().quantization.keras
    tf_keras.utils.set_random_seed(0)
    i = tf_keras.Input((6,))
    h = tf_keras.layers.Dense(8, activation="relu")(i)
    model = tf_keras.Model(i, tf_keras.layers.Dense(3, name="logits")(h))
    x = np.random.default_rng(0).normal(0, 20, (300, 6)).astype("float32")
    ref = model(x).numpy()
    q = qk.quantize_model(model)
    before = [w.copy() for w in q.get_weights()]
    fresh_err = np.median(np.abs(q(x, training=False).numpy() - ref))
    assert calibrate_ranges(q, TrainingData.from_arrays([x]), seed=0) == 3  # input, hidden, logits

    def var(layer, suffix: str) -> float:
        (v,) = [v for v in layer.weights if v.name.endswith(suffix)]
        return float(v.numpy())

    (inp,) = [layer for layer in q.layers if type(layer).__name__ == "QuantizeLayer"]
    assert var(inp, "_min:0") < -40 and var(inp, "_max:0") > 40  # input ~ N(0, 20)
    assert var(q.layers[-1], "post_activation_max:0") > 6  # logits beyond tfmot's initial 6
    # with calibrated ranges the fake-quant model tracks the float one; trainable weights are untouched
    err = np.median(np.abs(q(x, training=False).numpy() - ref))
    assert err < 0.02 * np.max(np.abs(ref)) and err < fresh_err / 10
    changed = [a for a, b in zip(before, q.get_weights()) if a.shape != b.shape or not np.array_equal(a, b)]
    assert len(changed) == 3 * 2  # only the three min/max pairs


def test_qat_freezes_batchnorm_statistics():
    import tf_keras

    from edgepack.optimize.finetune import FinetuneOptions, TrainingData
    from edgepack.optimize.qat import quantize_aware

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    i = tf_keras.Input((6, 6, 1))
    x = L.ReLU(6.0)(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, use_bias=False)(i)))
    model = tf_keras.Model(i, L.Dense(3)(L.Flatten()(x)))
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, (64, 6, 6, 1)).astype("float32")  # far from the BN's initial statistics
    stats = [w.copy() for w in model.get_layer("bn").get_weights()]
    trained, report = quantize_aware(model, TrainingData.from_arrays([x_train], rng.integers(0, 3, 64)),
                                     FinetuneOptions(epochs=2, learning_rate=1e-3))
    assert report.frozen_batchnorm == 1 and report.to_dict()["frozen_batchnorm"] == 1
    (bn,) = [getattr(layer, "layer", layer) for layer in trained.layers
             if type(getattr(layer, "layer", layer)).__name__ == "BatchNormalization"]
    for before, after in zip(stats, bn.get_weights()):  # gamma, beta, moving mean and variance unchanged
        np.testing.assert_array_equal(before, after)
