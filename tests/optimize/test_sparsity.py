"""Magnitude and m:n sparsity through tfmot, fine-tuned and stripped."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CLASSES, INPUT_SHAPE


@pytest.fixture(scope="module")
def train():
    from edgepack.optimize.finetune import TrainingData

    rng = np.random.default_rng(0)
    return TrainingData.from_arrays([rng.random((120, *INPUT_SHAPE), dtype=np.float32)], rng.integers(0, CLASSES, 120))


def test_magnitude_sparsity_reaches_the_target(train):
    from edgepack.optimize.finetune import FinetuneOptions
    from edgepack.optimize.measure import zip_size
    from edgepack.optimize.sparsity import kernel_sparsity, sparsify
    from tests.conftest import build_tf_keras

    model = build_tf_keras()
    sparse, report = sparsify(model, train, FinetuneOptions(epochs=2), target=0.75, keep_layers=("logits",))
    assert len(report.layers) == 2 and "logits" not in report.layers  # --keep-layers honoured
    assert all(0.72 <= s <= 0.78 for s in report.layers.values()), report.layers
    assert not any("prune" in layer.name for layer in sparse.layers)  # wrappers stripped
    assert kernel_sparsity(sparse, ["logits"])[0]["logits"] == 0.0
    assert report.finetune.metric == "accuracy" and report.finetune.target == "labels"
    dense_bytes = np.concatenate([w.ravel() for w in model.get_weights()]).tobytes()
    sparse_bytes = np.concatenate([w.ravel() for w in sparse.get_weights()]).tobytes()
    assert zip_size(sparse_bytes) < 0.6 * zip_size(dense_bytes)


def test_two_of_four_sparsity(train):
    from edgepack.optimize.finetune import FinetuneOptions
    from edgepack.optimize.sparsity import sparsify
    from tests.conftest import build_tf_keras

    model = build_tf_keras()
    hidden = next(layer.name for layer in model.layers if type(layer).__name__ == "Dense" and layer.name != "logits")
    sparse, report = sparsify(model, train, FinetuneOptions(epochs=1), m_by_n=(2, 4))
    assert report.layers[hidden] == pytest.approx(0.5, abs=0.01)
    kernel = sparse.get_layer(hidden).get_weights()[0]  # (inputs, units): blocks of 4 along the inputs
    blocks = kernel.T.reshape(kernel.shape[1], -1, 4)
    assert int((blocks != 0).sum(axis=-1).max()) <= 2
