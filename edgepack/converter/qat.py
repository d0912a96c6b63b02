"""Quantization-aware training with tfmot: fake-quantize, fine-tune, then the usual int8 conversion.

Layers tfmot's 8-bit scheme cannot quantize are left out of the annotation (and named in the report);
the converter still quantizes them post-training. After ``--prune sparsity`` the sparsity-preserving
scheme keeps the zeros through QAT (tfmot's collaborative optimization).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edgepack.converter.finetune import FinetuneOptions, FinetuneResult, TrainingData, finetune
from edgepack.converter.sparsity import _set_unwrapped_weights, import_tfmot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QatReport:
    scheme: str
    unquantized: list[str]  # layers tfmot could not quantize (converted post-training instead)
    finetune: FinetuneResult

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "unquantized_layers": self.unquantized, **self.finetune.to_dict()}


# tfmot folds BatchNormalization into the conv/dense layer before it (its layout transforms), so such
# a BatchNormalization is quantized with that layer even though the registry does not list it.
_BN = ("BatchNormalization", "SyncBatchNormalization")
_FOLDS_BN = ("Conv2D", "DepthwiseConv2D", "Dense")


def _folded_batchnorm(layer: Any) -> bool:
    if type(layer).__name__ not in _BN or len(layer._inbound_nodes) != 1:
        return False
    before = layer._inbound_nodes[0].inbound_layers
    before = before[0] if isinstance(before, (list, tuple)) and len(before) == 1 else before
    return type(before).__name__ in _FOLDS_BN and getattr(before, "activation", None) is not None and \
        before.activation.__name__ == "linear"


def unsupported_layers(model: Any) -> list[str]:
    """``name (Class)`` of the layers tfmot's default 8-bit scheme cannot quantize."""
    import_tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_registry as registry

    reg = registry.Default8BitQuantizeRegistry()
    return [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
            if type(layer).__name__ != "InputLayer" and not reg.supports(layer) and not _folded_batchnorm(layer)]


def quantize_aware(model: Any, data: TrainingData, opts: FinetuneOptions, *,
                   preserve_sparsity: bool = False, per_tensor: bool = False) -> tuple[Any, QatReport]:
    """QAT-fine-tune a tf_keras ``model``; returns the fake-quantized model, ready for the converter."""
    import tf_keras

    tfmot = import_tfmot()
    qk = tfmot.quantization.keras
    skipped = unsupported_layers(model)
    skipped_names = {s.split(" (")[0] for s in skipped}
    if skipped:
        log.warning("QAT: %d layer(s) cannot be quantization-aware trained and will be quantized after "
                    "training: %s", len(skipped), ", ".join(skipped))
    scheme = None
    scheme_name = "default_8bit"
    if preserve_sparsity:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        scheme_name = "default_8bit_prune_preserve"
    elif per_tensor:
        scheme = qk.default_8bit.Default8BitQuantizeScheme(disable_per_axis=True)
        scheme_name = "default_8bit_per_tensor"

    def build() -> Any:
        def annotate(layer):
            clone = layer.__class__.from_config(layer.get_config())
            return clone if layer.name in skipped_names else qk.quantize_annotate_layer(clone)

        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        _set_unwrapped_weights(annotated, model)
        with qk.quantize_scope():
            return qk.quantize_apply(annotated, scheme) if scheme is not None else qk.quantize_apply(annotated)

    trained, result = finetune(build, model, data, opts, label="qat", start=model)
    return trained, QatReport(scheme_name, skipped, result)
