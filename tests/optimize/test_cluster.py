"""Weight clustering through tfmot: at most K values per kernel, fine-tuned and stripped."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CLASSES, INPUT_SHAPE


@pytest.fixture(scope="module")
def train():
    from edgepack.optimize.finetune import TrainingData

    rng = np.random.default_rng(0)
    return TrainingData.from_arrays([rng.random((120, *INPUT_SHAPE), dtype=np.float32)], rng.integers(0, CLASSES, 120))


def test_clustering_leaves_at_most_k_values(train):
    from edgepack.optimize.cluster import cluster_weights, kernel_of
    from edgepack.optimize.finetune import FinetuneOptions
    from tests.conftest import build_tf_keras

    model = build_tf_keras()
    before = {layer.name: kernel_of(layer) for layer in model.layers if kernel_of(layer) is not None}
    clustered, report = cluster_weights(model, train, FinetuneOptions(epochs=2), clusters=6, keep_layers=("logits",))
    assert not any("cluster" in type(layer).__name__.lower() for layer in clustered.layers)  # stripped
    by = {la.name: la for la in report.layers}
    assert set(by) == set(before) - {"logits"} and "logits" in report.skipped
    for layer in clustered.layers:
        kernel = kernel_of(layer)
        if layer.name in by:
            assert len(np.unique(kernel)) <= 6 == by[layer.name].clusters_after
            assert by[layer.name].clusters_before == len(np.unique(before[layer.name])) > 6
        elif kernel is not None:
            assert len(np.unique(kernel)) > 6  # not clustered (fine-tuned with the rest)
    hidden = next(la.name for la in model.layers if type(la).__name__ == "Dense" and la.name != "logits")
    assert by[hidden].params == 128 * 16 + 16 and by[hidden].macs == 128 * 16  # auto names vary per session
    assert report.finetune.metric == "accuracy" and 1 <= report.finetune.epochs <= 2
    # the original model (the teacher) is untouched
    for layer in model.layers:
        if layer.name in before:
            np.testing.assert_array_equal(kernel_of(layer), before[layer.name])


def test_no_layer_to_cluster_is_a_usage_error(train):
    from edgepack.errors import UsageError
    from edgepack.optimize.cluster import cluster_weights
    from edgepack.optimize.finetune import FinetuneOptions
    from tests.conftest import build_tf_keras

    with pytest.raises(UsageError, match="--cluster 8: no layer to cluster"):
        cluster_weights(build_tf_keras(), train, FinetuneOptions(epochs=1), clusters=8, cluster_layers=("nothing*",))
