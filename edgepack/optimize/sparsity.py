"""Unstructured and m:n sparsity through tfmot's ``prune_low_magnitude``, fine-tuned and stripped.

Sparse weights do not make a ``.tflite`` faster on stock LiteRT kernels, but zeros compress: the
manifest records the achieved sparsity per layer and the deflated (zip) size of the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.optimize.finetune import FinetuneOptions, FinetuneResult, TrainingData, finetune
from edgepack.optimize.graph import selected

log = logging.getLogger(__name__)

# Layers whose kernels prune_low_magnitude handles, and the subset tfmot accepts for m:n sparsity.
MAGNITUDE_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv2D", "SeparableConv2D")
M_BY_N_LAYERS = ("Conv2D", "Dense")


def import_tfmot():
    """tfmot, without leaving its ``TF_USE_LEGACY_KERAS=1`` side effect in our environment."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization as tfmot

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot


@dataclass(frozen=True)
class SparsityReport:
    target: float | None  # magnitude target sparsity, None for m:n
    m_by_n: tuple[int, int] | None
    layers: dict[str, float]  # achieved sparsity per pruned layer (fraction of zero weights in the kernel)
    overall: float
    finetune: FinetuneResult

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "m_by_n": f"{self.m_by_n[0]}:{self.m_by_n[1]}" if self.m_by_n else None,
                "achieved_overall": self.overall, "layers": self.layers, "finetune": self.finetune.to_dict()}


def _chosen(layer: Any, kinds: tuple[str, ...], prune_layers: tuple[str, ...], keep_layers: tuple[str, ...]) -> bool:
    return type(layer).__name__ in kinds and selected(layer.name, prune_layers, keep_layers)


def kernel_sparsity(model: Any, names: list[str] | None = None) -> tuple[dict[str, float], float]:
    """Fraction of exact zeros in each layer's kernel, and over all of them."""
    per, zeros, total = {}, 0, 0
    for layer in model.layers:
        if names is not None and layer.name not in names:
            continue
        kernel = getattr(layer, "depthwise_kernel", None) if type(layer).__name__ == "DepthwiseConv2D" \
            else getattr(layer, "kernel", None)
        if kernel is None:
            continue
        w = np.asarray(kernel)
        per[layer.name] = round(float(np.mean(w == 0)), 4)
        zeros += int(np.sum(w == 0))
        total += w.size
    return per, round(zeros / total, 4) if total else 0.0


def sparsify(model: Any, data: TrainingData, opts: FinetuneOptions, *, target: float | None = None,
             m_by_n: tuple[int, int] | None = None, prune_layers: tuple[str, ...] = (),
             keep_layers: tuple[str, ...] = ()) -> tuple[Any, SparsityReport]:
    """Prune ``model`` (tf_keras) to ``target`` sparsity or m:n, fine-tune on ``data``, strip the wrappers."""
    import tf_keras

    tfmot = import_tfmot()
    sk = tfmot.sparsity.keras
    steps_per_epoch = max(1, int(np.ceil(len(data) * (1 - opts.validation_split) / opts.batch_size)))
    if m_by_n is not None:
        schedule, kinds, extra = sk.ConstantSparsity(0.5, begin_step=0, frequency=1), M_BY_N_LAYERS, \
            {"sparsity_m_by_n": m_by_n}
    else:
        # Reach the target within the first epoch, so early stopping can never restore a denser model.
        schedule = sk.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(target), begin_step=0,
                                      end_step=steps_per_epoch, frequency=max(1, steps_per_epoch // 10))
        kinds, extra = MAGNITUDE_LAYERS, {}
    chosen = [layer.name for layer in model.layers if _chosen(layer, kinds, prune_layers, keep_layers)]

    def build() -> Any:
        def wrap(layer):
            clone = layer.__class__.from_config(layer.get_config())
            if layer.name in chosen:
                return sk.prune_low_magnitude(clone, pruning_schedule=schedule, **extra)
            return clone

        clone = tf_keras.models.clone_model(model, clone_function=wrap)
        set_unwrapped_weights(clone, model)
        return clone

    if not chosen:
        from edgepack.errors import UsageError

        raise UsageError("--prune sparsity: no layer to sparsify", hint=f"sparsity applies to {', '.join(kinds)} "
                                                                          "layers; check --prune-layers/--keep-layers")
    trained, result = finetune(build, model, data, opts, label="sparsity",
                               callbacks=lambda kmod: [sk.UpdatePruningStep()])
    stripped = sk.strip_pruning(trained)
    per, overall = kernel_sparsity(stripped, chosen)
    return stripped, SparsityReport(target, m_by_n, per, overall, result)


def set_unwrapped_weights(clone: Any, source: Any) -> None:
    """Copy the source's weights into a clone whose layers may be wrapped by tfmot."""
    by_name = {layer.name: layer for layer in source.layers}
    for layer in clone.layers:
        inner = getattr(layer, "layer", layer)
        src = by_name.get(inner.name) or by_name.get(layer.name)
        if src is not None and src.get_weights():
            inner.set_weights(src.get_weights())
