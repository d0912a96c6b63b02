"""Weight clustering (k-means weight sharing) through tfmot's ``cluster_weights``, fine-tuned and stripped.

Every clustered kernel ends with at most K distinct values, so the ``.tflite`` deflates far better
(zip download, flash with compression). The layers are not smaller on stock LiteRT kernels: the manifest
records the distinct values per layer before and after, and the zip size of the model. After
``--prune sparsity`` the sparsity-preserving variant keeps the zeros (tfmot's collaborative
optimization); ``--qat`` then uses cluster-preserving QAT so int8 keeps the clusters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.errors import UsageError
from edgepack.optimize.finetune import FinetuneOptions, FinetuneResult, TrainingData, finetune
from edgepack.optimize.graph import copy_model, selected
from edgepack.optimize.measure import layer_macs
from edgepack.optimize.qat import freeze_batchnorm
from edgepack.optimize.sparsity import import_tfmot

log = logging.getLogger(__name__)

# Clustering fine-tunes a trained model (mostly its centroids): a tenth of the pruning fine-tune's rate,
# as for QAT. On the MobileNet-style digits net (fold 1 of 3, 599 held-out digits), cluster 16 lost 1.17
# points against int8 PTQ at 1e-3 and 0.17 at 1e-4.
LEARNING_RATE = 1e-4

# Layers whose kernel tfmot's clustering registry clusters (the attribute holding it); it clusters no
# weight of DepthwiseConv2D.
KERNELS = {"Conv1D": "kernel", "Conv2D": "kernel", "Conv3D": "kernel", "Dense": "kernel", "Conv2DTranspose": "kernel"}


@dataclass(frozen=True)
class ClusterLayer:
    name: str
    clusters_before: int  # distinct kernel values before clustering
    clusters_after: int  # distinct kernel values after (at most K)
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "clusters_before": self.clusters_before, "clusters_after": self.clusters_after,
                "params": self.params, "macs": self.macs}


@dataclass(frozen=True)
class ClusterReport:
    clusters: int
    preserve_sparsity: bool
    layers: list[ClusterLayer]
    skipped: dict[str, str]  # layer -> why it was left unclustered
    finetune: FinetuneResult

    def to_dict(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "preserve_sparsity": self.preserve_sparsity,
                "layers": [la.to_dict() for la in self.layers], "skipped": self.skipped,
                "finetune": self.finetune.to_dict()}


def kernel_of(layer: Any) -> np.ndarray | None:
    attr = KERNELS.get(type(layer).__name__)
    var = getattr(layer, attr, None) if attr else None
    return None if var is None else np.asarray(var)


def distinct(w: np.ndarray) -> int:
    return int(np.unique(w).size)


def choose_layers(model: Any, clusters: int, cluster_layers: tuple[str, ...] = (),
                  keep_layers: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """The layers to cluster, and why each other conv/dense layer is left alone."""
    chosen, skipped = [], {}
    for layer in model.layers:
        kernel = kernel_of(layer)
        if kernel is None:
            continue
        if not selected(layer.name, cluster_layers, keep_layers):
            skipped[layer.name] = "excluded by --keep-layers/--cluster-layers"
        elif kernel.size <= clusters:
            skipped[layer.name] = f"{kernel.size} weights, not more than {clusters} clusters"
        else:
            chosen.append(layer.name)
    return chosen, skipped


def cluster_weights(model: Any, data: TrainingData, opts: FinetuneOptions, *, clusters: int,
                    cluster_layers: tuple[str, ...] = (), keep_layers: tuple[str, ...] = (),
                    preserve_sparsity: bool = False) -> tuple[Any, ClusterReport]:
    """Cluster ``model`` (tf_keras) to ``clusters`` values per kernel, fine-tune on ``data``, strip the wrappers.

    BatchNormalization layers are frozen while fine-tuning (as for QAT): the clustered model computes
    nearly the original function, so its statistics still hold."""
    import tf_keras

    tfmot = import_tfmot()
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as exp_cluster

    ck = tfmot.clustering.keras
    chosen, skipped = choose_layers(model, clusters, cluster_layers, keep_layers)
    if not chosen:
        raise UsageError(f"--cluster {clusters}: no layer to cluster",
                         hint=f"clustering applies to {', '.join(KERNELS)} layers with more than {clusters} weights; "
                              "check --cluster-layers/--keep-layers")
    before = {layer.name: distinct(kernel_of(layer)) for layer in model.layers if layer.name in chosen}
    # Density-based initial centroids keep the zeros' cluster when sparsity is preserved (tfmot's advice);
    # k-means++ otherwise.
    init = ck.CentroidInitialization.DENSITY_BASED if preserve_sparsity else ck.CentroidInitialization.KMEANS_PLUS_PLUS

    def build() -> Any:
        def wrap(layer):
            clone = layer.__class__.from_config(layer.get_config())
            freeze_batchnorm(clone)
            if layer.name in chosen:  # tfmot seeds the centroids from the weights the wrapped layer has
                clone.build(layer.input_shape)
                clone.set_weights(layer.get_weights())
                return exp_cluster.cluster_weights(clone, number_of_clusters=clusters, cluster_centroids_init=init,
                                                   preserve_sparsity=preserve_sparsity)
            return clone

        clone = tf_keras.models.clone_model(model, clone_function=wrap)
        by_name = {layer.name: layer for layer in model.layers}
        for layer in clone.layers:  # the clustered ones got theirs before wrapping
            if layer.name in by_name and layer.name not in chosen and by_name[layer.name].get_weights():
                layer.set_weights(by_name[layer.name].get_weights())
        return clone

    trained, result = finetune(build, model, data, opts, label="cluster")
    # strip_clustering reuses the unwrapped layers in its new graph (two inbound nodes each, which hides
    # BatchNormalization folding from QAT): a clean clone afterwards.
    stripped = copy_model(ck.strip_clustering(trained))
    macs = layer_macs(stripped)
    layers = [ClusterLayer(layer.name, before[layer.name], distinct(kernel_of(layer)), int(layer.count_params()),
                           int(macs.get(layer.name, 0))) for layer in stripped.layers if layer.name in before]
    return stripped, ClusterReport(clusters, preserve_sparsity, layers, skipped, result)
