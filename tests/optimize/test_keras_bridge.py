"""Keras 3 → tf_keras rebuild: same architecture, same weights, same outputs; clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import ConversionError


def _keras3_model():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((8, 8, 3), name="image")
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(i)))
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    y = L.Conv2D(8, 1, kernel_regularizer=keras.regularizers.L2(1e-4))(y)
    x = L.Concatenate()([L.Add()([x, y]), L.SeparableConv2D(4, 3, padding="same")(x)])
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(i, L.Dense(5, activation="softmax", name="probs")(x))
    rng = np.random.default_rng(1)
    bn = next(layer for layer in model.layers if type(layer).__name__ == "BatchNormalization")
    bn.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in bn.get_weights()])
    return model


def test_rebuild_matches_outputs_and_weights():
    from edgepack.optimize.keras_bridge import to_tf_keras

    model = _keras3_model()
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    twin, report = to_tf_keras(model, x)
    assert type(twin).__module__.startswith("tf_keras")
    assert twin.count_params() == model.count_params()
    assert [layer.name for layer in twin.layers[1:]] == [layer.name for layer in model.layers[1:]]
    assert report.layers == len(model.layers) - 1
    assert report.max_abs_diff < 1e-5
    np.testing.assert_allclose(twin.predict(x, verbose=0), np.asarray(model(x)), atol=1e-5)
    assert twin.get_layer("probs").activation.__name__ == "softmax"


def test_unsupported_layers_are_listed():
    import keras

    from edgepack.optimize.keras_bridge import to_tf_keras

    class Scale(keras.layers.Layer):  # a custom Keras 3 layer has no tf_keras twin
        def call(self, x):
            return x * 2.0

    i = keras.Input((4,))
    model = keras.Model(i, keras.layers.Dense(2)(Scale(name="my_scale")(i)))
    with pytest.raises(ConversionError, match=r"tf_keras cannot rebuild: my_scale \(Scale"):
        to_tf_keras(model, np.zeros((1, 4), np.float32))


def test_tf_keras_models_pass_through():
    from edgepack.optimize.keras_bridge import to_tf_keras
    from tests.conftest import build_tf_keras

    model = build_tf_keras()
    twin, report = to_tf_keras(model)
    assert twin is model and report.max_abs_diff == 0.0
