"""Quantization-aware training with tfmot: fake-quantize, fine-tune, then the usual int8 conversion.

Layers tfmot's 8-bit scheme cannot quantize are left out of the annotation (and named in the report);
the converter still quantizes them post-training. After ``--prune sparsity`` the sparsity-preserving
scheme keeps the zeros through QAT, and after ``--cluster`` the cluster-preserving scheme keeps each
kernel's K values (and the zeros too after both: tfmot's collaborative optimization, PCQAT). With ``--per-tensor`` the fake
quantizers are per tensor too (``Default8BitQuantizeScheme(disable_per_axis=True)``), so training sees
the converter's rounding.

Activation ranges are calibrated before training. tfmot starts every moving-average range at [-6, 6]
and moves it 0.1% per step, so a short fine-tune ends with ranges near ±6 whatever the data: logits
that reach 16 are clipped at about 7 in the converted model and tie. One forward pass over a seeded
sample of the training data sets each range to what that sample produces, as PTQ calibration would;
training then starts from the int8 model PTQ would give and moves the ranges from there.
BatchNormalization layers are frozen (inference mode, fixed statistics) while QAT trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.optimize.finetune import FinetuneOptions, FinetuneResult, TrainingData, finetune
from edgepack.optimize.sparsity import import_tfmot, set_unwrapped_weights

log = logging.getLogger(__name__)


CALIBRATION_SAMPLES = 256
# QAT fine-tunes a model that is already trained: a tenth of the pruning fine-tune's rate. At 1e-3 QAT
# lost 0.3-1.1 points on a converged MobileNet-style digits model whose PTQ lost none; at 1e-4, none.
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class QatReport:
    scheme: str
    unquantized: list[str]  # layers tfmot could not quantize (converted post-training instead)
    finetune: FinetuneResult
    calibrated_ranges: int = 0  # activation ranges set from data before training
    frozen_batchnorm: int = 0  # BatchNormalization layers kept in inference mode while training

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "unquantized_layers": self.unquantized,
                "calibrated_ranges": self.calibrated_ranges, "frozen_batchnorm": self.frozen_batchnorm,
                **self.finetune.to_dict()}


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
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    reg = registry.Default8BitQuantizeRegistry()
    return [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
            if type(layer).__name__ != "InputLayer" and not reg.supports(layer) and not _folded_batchnorm(layer)]


def calibrate_ranges(qmodel: Any, data: TrainingData, seed: int = 0, batch: int = 32) -> int:
    """Set every activation range of a fake-quant model from a seeded data sample, as PTQ would.

    The sample goes through the model in training mode, ``batch`` samples at a time, with tfmot's
    averaging switched off; each range ends as the min/max over the whole sample (the input layer's
    running range, which starts at [0, 0], included). Every other variable (weights, BatchNormalization
    statistics, the weight quantizers' ranges) is restored afterwards. Returns how many ranges were set.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    n = min(len(data), CALIBRATION_SAMPLES)
    sample = data.split(n / len(data), seed)[1] if n < len(data) else data
    pairs: dict[int, tuple[Any, Any]] = {}
    moving_avg, all_values = quant_ops.MovingAvgQuantize, quant_ops.AllValuesQuantize

    def set_from_batch(inputs, min_var, max_var, **kw):
        pairs.setdefault(id(min_var), (min_var, max_var))
        return moving_avg(inputs, min_var, max_var, **{**kw, "ema_decay": 0.0})

    def widen_to_batch(inputs, min_var, max_var, **kw):
        pairs.setdefault(id(min_var), (min_var, max_var))
        return all_values(inputs, min_var, max_var, **kw)

    snapshot = qmodel.get_weights()
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # running min/max over the batches
    quant_ops.MovingAvgQuantize, quant_ops.AllValuesQuantize = set_from_batch, widen_to_batch
    try:
        for xs, _ in sample.chunks(batch):
            qmodel(xs if len(xs) > 1 else xs[0], training=True)
            for key, (lo_var, hi_var) in pairs.items():
                lo, hi = lo_var.numpy(), hi_var.numpy()
                if key in seen:
                    lo, hi = np.minimum(lo, seen[key][0]), np.maximum(hi, seen[key][1])
                seen[key] = (lo, hi)
    finally:
        quant_ops.MovingAvgQuantize, quant_ops.AllValuesQuantize = moving_avg, all_values
    qmodel.set_weights(snapshot)
    for key, (lo_var, hi_var) in pairs.items():
        lo_var.assign(seen[key][0])
        hi_var.assign(seen[key][1])
    return len(pairs)


def freeze_batchnorm(layer: Any) -> bool:
    """Freeze ``layer`` if it is a BatchNormalization: inference mode, fixed statistics and scale/offset.

    QAT fine-tunes a trained model in small batches; BatchNormalization in training mode would normalise
    with each batch's statistics and drag its moving averages along with them. Freezing it is the usual
    QAT practice (Krishnamoorthi 2018; PyTorch's ``freeze_bn_stats``). On a MobileNet-style digits net,
    QAT with live BatchNorm lost 0.33 points (5-fold) where PTQ lost none. Applied to the annotated layer
    before ``quantize_apply``: tfmot's wrapper copies the layer's trainable weights when it is built.
    Returns whether ``layer`` was frozen.
    """
    if type(layer).__name__ not in _BN:
        return False
    layer.trainable = False
    return True


def cluster_preserve_scheme(preserve_sparsity: bool) -> Any:
    """tfmot's cluster-preserving 8-bit scheme, with one fix to its registry.

    Its ``supports()`` counts any layer without trainable weights as supported, then asks the default
    registry for a config, which refuses BatchNormalization: a frozen BatchNormalization (see
    :func:`freeze_batchnorm`) that is not folded would end QAT with a ValueError. Here a layer is
    supported only when the default 8-bit registry supports it too; the others are left unquantized
    by QAT, as in the default scheme.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        cluster_preserve_quantize_registry as cp_registry,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        default_8bit_cluster_preserve_quantize_scheme as cp_scheme,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    default = registry.Default8BitQuantizeRegistry()

    class Registry(cp_registry.Default8bitClusterPreserveQuantizeRegistry):
        def supports(self, layer):  # noqa: D102
            return super().supports(layer) and default.supports(layer)

    class Scheme(cp_scheme.Default8BitClusterPreserveQuantizeScheme):
        def get_quantize_registry(self):  # noqa: D102
            return Registry(self.preserve_sparsity)

    return Scheme(preserve_sparsity=preserve_sparsity)


def quantize_aware(model: Any, data: TrainingData, opts: FinetuneOptions, *, preserve_sparsity: bool = False,
                   preserve_clusters: bool = False, per_tensor: bool = False) -> tuple[Any, QatReport]:
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
    if preserve_clusters:  # CQAT, or PCQAT after sparsity: fine-tunes the centroids, not the weights
        scheme = cluster_preserve_scheme(preserve_sparsity)
        scheme_name = "default_8bit_cluster_preserve" + ("_sparsity" if preserve_sparsity else "")
    elif preserve_sparsity:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        scheme_name = "default_8bit_prune_preserve"
    elif per_tensor:
        scheme = qk.default_8bit.Default8BitQuantizeScheme(disable_per_axis=True)
        scheme_name = "default_8bit_per_tensor"

    calibrated: list[int] = []
    frozen: set[str] = set()

    def build() -> Any:
        def annotate(layer):
            clone = layer.__class__.from_config(layer.get_config())
            if freeze_batchnorm(clone):
                frozen.add(clone.name)
            return clone if layer.name in skipped_names else qk.quantize_annotate_layer(clone)

        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        set_unwrapped_weights(annotated, model)
        with qk.quantize_scope():
            qmodel = qk.quantize_apply(annotated, scheme) if scheme is not None else qk.quantize_apply(annotated)
        calibrated.append(calibrate_ranges(qmodel, data, opts.seed))
        return qmodel

    # "before" scores the calibrated fake-quant model: about the accuracy PTQ would give
    trained, result = finetune(build, model, data, opts, label="qat")
    return trained, QatReport(scheme_name, skipped, result, calibrated[-1], len(frozen))
