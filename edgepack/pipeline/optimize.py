"""The optimize stage (between load and calibrate) and the measure stage (after read-back).

optimize: channel pruning → fine-tune → low-rank factorization → fine-tune → (Keras 3 → tf_keras
bridge when tfmot is needed) → sparsity → clustering (sparsity-preserving after sparsity) → QAT
(sparsity- and/or cluster-preserving), on ``st.loaded.model``; the converter then converts the
optimized model. The original stays in ``st.original`` for the manifest and for the before/after measurements.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from edgepack.errors import UsageError
from edgepack.request import PruneSpec, QuantizeMode

if TYPE_CHECKING:
    from edgepack.pipeline.state import PipelineState

log = logging.getLogger(__name__)
def _techniques(st: PipelineState, spec: PruneSpec | None) -> str:
    opt = st.request.optimize
    parts = [f"--prune {opt.prune}" if spec is not None else "", f"--cluster {opt.cluster}" if opt.cluster else "",
             f"--low-rank {opt.low_rank}" if opt.low_rank else "", "--qat" if opt.qat else ""]
    return "/".join(p for p in parts if p)


def combination_problem(*, mode: str | None, qat: bool, per_tensor: bool, sparsity: bool,
                        cluster: int | None) -> UsageError | None:
    """Why convert refuses this combination of options, or None. ``sparsity``: the --prune form
    trains with tfmot (sparsity or M:N). ``edgepack tune`` samples only combinations this accepts."""
    if qat and mode is not None and mode not in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO):
        return UsageError(f"--qat trains for integer inference; --quantize {mode} does not use it",
                          hint="use --quantize int8 or int8-float-io")
    if qat and per_tensor and sparsity:
        return UsageError("--per-tensor cannot be combined with sparsity-preserving QAT: tfmot's prune-preserve "
                          "scheme quantizes conv weights per channel", hint="drop --per-tensor, or --prune sparsity/m:n")
    if qat and per_tensor and cluster is not None:
        return UsageError(f"--cluster {cluster} --qat --per-tensor is not supported: tfmot's cluster-preserving "
                          "QAT quantizes conv weights per channel", hint="drop --per-tensor, or --qat")
    return None


def _check_request(st: PipelineState, spec: PruneSpec | None) -> None:
    req, opt = st.request, st.request.optimize
    if not st.loaded.is_keras:
        raise UsageError(f"{_techniques(st, spec)} not supported for this format: {req.model.path.name} is "
                         f"{st.loaded.format.value}, and these optimizations edit a Keras model (.keras or .h5)",
                         hint="convert the Keras source instead")
    refused = combination_problem(mode=req.quantize.mode, qat=opt.qat, per_tensor=req.quantize.per_tensor,
                                  sparsity=spec is not None and spec.uses_tfmot, cluster=opt.cluster)
    if refused is not None:
        raise refused
    tfmot = opt.qat or opt.cluster is not None or (spec is not None and spec.uses_tfmot)
    if opt.train_data is None and tfmot:
        what = "--qat" if opt.qat else (f"--cluster {opt.cluster}" if opt.cluster else f"--prune {opt.prune}")
        raise UsageError(f"{what} needs training data", hint="pass --train-data FILE (.npz with x, and y if "
                                                             "labelled; without y the original model teaches)")
    if opt.train_data is None and (opt.distill or opt.distribute):
        log.warning("--distill/--distribute only apply when fine-tuning with --train-data; ignoring them")


def _training_data(st: PipelineState):
    from edgepack.calibration import open_dataset
    from edgepack.optimize.finetune import TrainingData

    req = st.request
    if req.optimize.train_data is None:
        return None
    ds = open_dataset(req.optimize.train_data, st.loaded.inputs, what="--train-data")
    return TrainingData.from_dataset(ds, st.loaded.inputs)


def _totals(model: Any) -> dict[str, int]:
    from edgepack.optimize.measure import count_macs

    return {"params": int(model.count_params()), "macs": count_macs(model)}


def stage_optimize(st: PipelineState) -> dict | None:
    req, opt = st.request, st.request.optimize
    spec = opt.prune_spec
    if not opt.active:
        return None
    _check_request(st, spec)
    from edgepack.optimize.finetune import FinetuneOptions

    data = _training_data(st)
    opts = FinetuneOptions(epochs=opt.epochs, distill=opt.distill, distribute=opt.distribute, seed=req.seed,
                           on_epoch=st.on_epoch,
                           **({"learning_rate": opt.learning_rate} if opt.learning_rate is not None else {}))
    original = model = st.loaded.model
    section: dict[str, Any] = {"before": _totals(original)}
    if spec is not None and spec.kind == "channels":
        model = _prune_channels(model, data, opts, section, opt)
    if opt.low_rank is not None:
        model = _low_rank(model, original, data, opts, section, opt)
    section["after"] = _totals(model)
    fmt = st.loaded.format
    if opt.qat or opt.cluster is not None or (spec is not None and spec.uses_tfmot):
        model, fmt = _bridge(st, model, data, section)
    if spec is not None and spec.uses_tfmot:
        from edgepack.optimize.sparsity import sparsify

        model, sreport = sparsify(model, data, opts, target=spec.ratio if spec.kind == "sparsity" else None,
                                  m_by_n=spec.m_by_n, prune_layers=opt.prune_layers, keep_layers=opt.keep_layers)
        section["sparsity"] = sreport.to_dict()
    if opt.cluster is not None:
        from edgepack.optimize.cluster import LEARNING_RATE as CLUSTER_RATE
        from edgepack.optimize.cluster import cluster_weights

        copts = opts if opt.learning_rate is not None else dataclasses.replace(opts, learning_rate=CLUSTER_RATE)
        model, creport = cluster_weights(model, data, copts, clusters=opt.cluster, cluster_layers=opt.cluster_layers,
                                         keep_layers=opt.keep_layers,
                                         preserve_sparsity=spec is not None and spec.uses_tfmot)
        section["cluster"] = creport.to_dict()
    if opt.qat:
        from edgepack.optimize.qat import LEARNING_RATE, quantize_aware

        qopts = opts if opt.learning_rate is not None else dataclasses.replace(opts, learning_rate=LEARNING_RATE)
        model, qreport = quantize_aware(model, data, qopts, preserve_sparsity=spec is not None and spec.uses_tfmot,
                                        preserve_clusters=opt.cluster is not None, per_tensor=req.quantize.per_tensor)
        section["qat"] = qreport.to_dict()
    st.original = st.loaded
    st.loaded = dataclasses.replace(st.loaded, model=model, format=fmt)
    st.optimization = section
    return {k: v for k, v in (("prune", opt.prune), ("cluster", opt.cluster), ("low_rank", opt.low_rank),
                              ("qat", opt.qat), ("params", section["after"]["params"]),
                              ("macs", section["after"]["macs"])) if v}


def _prune_channels(original: Any, data, opts, section: dict, opt) -> Any:
    """--prune channels:R, fine-tuned on --train-data when given; recorded in ``section["channels"]``."""
    from edgepack.optimize.finetune import finetune
    from edgepack.optimize.graph import copy_model
    from edgepack.optimize.prune import prune_channels

    pruned, report = prune_channels(original, opt.prune_spec.ratio, norm=opt.prune_norm, round_to=opt.prune_round,
                                    prune_layers=opt.prune_layers, keep_layers=opt.keep_layers,
                                    group_ratios=opt.prune_groups)
    section["channels"] = report.to_dict()
    if data is None:
        log.warning("pruned without fine-tuning; pass --train-data to recover accuracy")
        return pruned
    model, result = finetune(lambda: copy_model(pruned), original, data, opts, label="prune")
    section["channels"]["finetune"] = result.to_dict()
    return model


def _low_rank(model: Any, original: Any, data, opts, section: dict, opt) -> Any:
    from edgepack.optimize.finetune import finetune
    from edgepack.optimize.lowrank import LEARNING_RATE, factorize, trainable_copy

    factored, report = factorize(model, opt.low_rank_spec, keep_layers=opt.keep_layers)
    if not any(la.factorized for la in report.layers):
        log.warning("--low-rank %s: no layer has fewer MACs as a factorized pair; the model is unchanged",
                    opt.low_rank)
    elif data is not None:
        lopts = opts if opt.learning_rate is not None else dataclasses.replace(opts, learning_rate=LEARNING_RATE)
        factored, result = finetune(lambda: trainable_copy(factored), original, data, lopts, label="low-rank")
        report = dataclasses.replace(report, finetune=result)
    else:
        log.warning("factorized without fine-tuning; pass --train-data to recover accuracy")
    section["low_rank"] = report.to_dict()
    return factored


def _bridge(st: PipelineState, model: Any, data, section: dict) -> tuple[Any, Any]:
    from edgepack.formats.detect import ModelFormat
    from edgepack.optimize.graph import is_tf_keras
    from edgepack.optimize.keras_bridge import to_tf_keras

    if is_tf_keras(model):
        return model, st.loaded.format
    sample = data.head(16)
    twin, report = to_tf_keras(model, sample if len(sample) > 1 else sample[0])
    section["keras_bridge"] = report.to_dict()
    log.info("rebuilt the Keras 3 model in tf_keras for tfmot (max abs diff %.3g)", report.max_abs_diff)
    return twin, ModelFormat.TF_KERAS


def stage_measure(st: PipelineState) -> dict | None:
    """.tflite bytes, zip bytes and LiteRT p50 latency of the original and the optimized model."""
    if st.original is None or st.optimization is None:
        return None
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.optimize.measure import litert_p50_ms, zip_size

    req = st.request
    before = convert_to_tflite(st.original, req.quantize.mode, st.calibration, per_tensor=req.quantize.per_tensor,
                               verbose=req.verbose)
    section = st.optimization
    for key, blob in (("before", before), ("after", st.tflite)):
        section[key].update(tflite_bytes=len(blob), zip_bytes=zip_size(blob), litert_p50_ms=litert_p50_ms(blob))
    b, a = section["before"], section["after"]
    section["reduction"] = {k: round(1 - a[k] / b[k], 4) if b[k] else 0.0
                            for k in ("params", "macs", "tflite_bytes", "zip_bytes", "litert_p50_ms")}
    return {"macs": f"{b['macs']} -> {a['macs']}", "p50_ms": f"{b['litert_p50_ms']} -> {a['litert_p50_ms']}"}
