"""QAT (alone and sparsity-preserving) on a Keras 3 model, through the whole pipeline."""

from __future__ import annotations

import json

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

    from edgepack.converter.qat import unsupported_layers

    i = tf_keras.Input((4, 4, 2))
    x = tf_keras.layers.Conv2D(2, 1, name="conv")(i)
    x = tf_keras.layers.LayerNormalization(name="ln")(x)
    model = tf_keras.Model(i, tf_keras.layers.Dense(2, name="out")(tf_keras.layers.Flatten()(x)))
    assert unsupported_layers(model) == ["ln (LayerNormalization)"]
