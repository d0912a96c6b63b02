"""The core stages: prepare, load, calibrate, convert, read back, check target, package."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any

from edgepack.calibration.sources import read_labels
from edgepack.errors import ConversionError, UsageError
from edgepack.formats.detect import LoadedModel, ModelFormat, load_model
from edgepack.packaging import bundle as bundle_mod
from edgepack.packaging.manifest import (
    MANIFEST_NAME,
    CalibrationInfo,
    Manifest,
    QuantizationInfo,
    SourceInfo,
    TargetInfo,
    TensorInfo,
    validate_dict,
)
from edgepack.pipeline.state import PipelineState
from edgepack.targets import load_target
from edgepack.targets.checks import ModelFacts, run_checks
from edgepack.tflite_model import TfliteModel, read_tflite

log = logging.getLogger(__name__)


def stage_prepare(st: PipelineState) -> dict:
    req = st.request
    bundle_mod.check_output(req.output.path, req.output.force)
    st.output_seen = bundle_mod.output_identity(req.output.path)
    st.target = load_target(req.target)
    if req.quantize.mode.value not in st.target.quantize_modes:
        raise UsageError(f"--quantize {req.quantize.mode} is not supported by target {st.target.name}",
                         hint=f"use one of: {', '.join(st.target.quantize_modes)}")
    if req.quantize.mode.needs_calibration and req.calibration.data is None:
        raise UsageError(f"--quantize {req.quantize.mode} needs calibration data",
                         hint="pass --calibration FILE (.npy or .npz of representative inputs), "
                              "or choose --quantize dynamic/float16/none")
    if req.budget.active and req.quantize.mode.value not in ("int8", "int8-float-io"):
        raise UsageError(f"an accuracy budget (--max-drop/--min-sqnr/--min-agreement) searches from int8; "
                         f"--quantize {req.quantize.mode} has nothing to search",
                         hint="use --quantize int8 or int8-float-io with the budget")
    if req.budget.metric is not None:  # the user's metric file: read now, not after minutes of conversion
        from edgepack.validation.metrics import TaskMetric

        st.task_metric = TaskMetric(req.budget.metric)
    if req.calibration.data is not None and not req.quantize.mode.needs_calibration:
        log.warning("--calibration is not used by --quantize %s; ignoring it", req.quantize.mode)
    if req.output.labels is not None:
        st.labels = read_labels(req.output.labels)
    return {"target": st.target.name}


def stage_load(st: PipelineState) -> dict:
    st.loaded = load_model(st.request.model.path, trust_model=st.request.model.trust)
    if st.request.model.onnx2tf_options and st.loaded.format is not ModelFormat.ONNX:
        raise UsageError("--onnx2tf-option applies to ONNX models only")
    if st.request.model.input_shapes:
        if st.loaded.format is not ModelFormat.ONNX:
            raise UsageError("--input-shape applies to ONNX models only",
                             hint="Keras and SavedModel inputs keep the shapes they were built with")
        from edgepack.formats.onnx import with_input_shapes

        st.loaded = with_input_shapes(st.loaded, dict(st.request.model.input_shapes))
    if st.labels is not None and len(st.loaded.output_names) == 1:
        classes = _output_classes(st.loaded)
        if classes is not None and classes != len(st.labels):
            raise UsageError(f"--labels {st.request.output.labels}: {len(st.labels)} labels for an output of "
                             f"{classes} classes", hint="give one label per output class, one per line")
    return {"format": st.loaded.format.value, "inputs": len(st.loaded.inputs), "outputs": len(st.loaded.output_names)}


def _output_classes(loaded: LoadedModel) -> int | None:
    model = loaded.model
    shape = getattr(model.outputs[0], "shape", None) if hasattr(model, "outputs") else None
    return int(shape[-1]) if shape is not None and shape[-1] is not None else None


def stage_calibrate(st: PipelineState) -> dict | None:
    from edgepack.calibration.calibrate import calibration_set, input_preprocessing

    req = st.request
    if not req.quantize.mode.needs_calibration:
        if req.calibration.preprocess is not None or req.recipe is not None:  # recorded for the device app all the same
            pre = input_preprocessing(st.loaded.inputs, spec=req.calibration.preprocess, recipe=req.recipe)
            st.input_data = {k: {"preprocessing": p.to_dict() if p else None} for k, p in pre.items()}
        return None
    specs = st.loaded.inputs
    if st.loaded.format is ModelFormat.ONNX:  # ONNX (NCHW) or TFLite (NHWC) layout: resolved at convert
        from edgepack.calibration.layout import relaxed_specs

        specs = relaxed_specs(specs)
    cal = calibration_set(req.calibration.data, specs, count=req.calibration.samples, seed=req.seed,
                          spec=req.calibration.preprocess, recipe=req.recipe, label_column=req.calibration.label_column,
                          min_samples=st.target.min_calibration_samples, target=st.target.name,
                          holdout=_holdout(req))
    st.calibration = cal.data
    st.heldout = cal.heldout
    st.calibration_info = CalibrationInfo(source=cal.source, samples=len(cal.data), available=cal.available,
                                          seed=req.seed, sha256=cal.sha256)
    st.input_data = {k: {"preprocessing": cal.preprocessing[k], "statistics": cal.statistics[k]}
                     for k in cal.data.names}
    return {"samples": len(cal.data), "available": cal.available, "warnings": len(cal.warnings)}


def stage_convert(st: PipelineState) -> dict:
    from edgepack.converter.tflite import convert_to_tflite

    if st.loaded.format is ModelFormat.ONNX:
        return _convert_onnx(st)
    st.tflite = convert_to_tflite(st.quantize_source or st.loaded, st.request.quantize.mode, st.calibration,
                                  per_tensor=st.request.quantize.per_tensor, verbose=st.request.verbose,
                                  batch=st.target.batch, keep_calibrated=_keeper(st))
    return {"bytes": len(st.tflite), **_calibration_detail(st)}


def _calibration_detail(st: PipelineState) -> dict:
    """How the kept calibrated model's ranges were recorded, and in how many seconds (the stage's detail)."""
    how = getattr(st.calibrated, "calibration", None)
    return {"calibration": how} if how else {}


def _keeper(st: PipelineState):
    """Keep the calibrated model the converter makes (the last one made): the budget's search
    quantizes it again, and the manifest counts the ranges its calibration repaired."""

    def keep(calibrated) -> None:
        st.calibrated = calibrated
        if st.calibration_info is not None:
            st.calibration_info = dataclasses.replace(st.calibration_info, repaired_ranges=len(calibrated.repaired))

    return keep


def _prepared(st: PipelineState):
    """The graph stage's prepared ONNX graph, made again from the ptq stage's rewrite when there is one
    (fused activations, equalized weights must reach onnx2tf; the original stays the reference)."""
    if st.quantize_source is None or st.prepared_onnx is None:
        return st.prepared_onnx
    from edgepack.converter.onnx.translate import conversion_shapes, prepare
    from edgepack.pipeline.graph import integer_forms

    model = st.quantize_source.model
    pairs = (st.graph or {}).get("state_pairs")
    prepared = prepare(model, conversion_shapes(model, st.target.batch), lower_lstm=bool(pairs))
    return integer_forms(prepared, st.request.quantize, st.target)


def _convert_onnx(st: PipelineState) -> dict:
    import tf_keras

    from edgepack.converter.onnx.translate import convert_onnx

    # onnx2tf builds a tf_keras model whose layer names come from process-wide counters, and the
    # names end up in the flatbuffer: reset them so the same request gives the same bytes.
    tf_keras.backend.reset_uids()

    req = st.request
    res = convert_onnx(st.quantize_source or st.loaded, req.quantize.mode, st.calibration,
                       per_tensor=req.quantize.per_tensor, verbose=req.verbose, batch=st.target.batch,
                       onnx2tf_options=dict(req.model.onnx2tf_options), keep_calibrated=_keeper(st),
                       prepared=_prepared(st), state_pairs=(st.graph or {}).get("state_pairs"))
    st.tflite = res.tflite
    st.source_io = {"inputs": {m.name: m.manifest_fields() for m in res.inputs},
                    "outputs": {m.name: m.manifest_fields() for m in res.outputs}}
    return {"bytes": len(st.tflite), **res.detail, **_calibration_detail(st)}


def stage_read_back(st: PipelineState) -> dict:
    st.info = read_tflite(st.tflite)
    actual, requested = st.info.quantization_mode, st.request.quantize.mode.value
    if requested == "dynamic" and actual == "none":
        raise ConversionError("--quantize dynamic left every weight float32: the converter quantizes only "
                              "weight tensors of 1024 or more elements, and this model has none",
                              hint="use --quantize int8 (with --calibration), float16 or none")
    if actual != requested:
        raise ConversionError(f"the converter produced a {actual} model although --quantize {requested} was "
                              "requested; edgepack does not relabel or fall back",
                              hint="run with -v to see the converter log")
    return {"mode": actual, "granularity": st.info.granularity}


def stage_check_target(st: PipelineState) -> dict:
    facts = ModelFacts(mode=st.info.quantization_mode, size=len(st.tflite), op_counts=st.info.op_counts,
                       arena_bytes=st.arena_bytes, delegate=st.delegate)
    results = run_checks(st.target, facts)
    for name, _, detail in results:
        if detail.startswith("warning: "):
            log.warning("target %s, check %s: %s", st.target.name, name, detail.removeprefix("warning: "))
    return {name: detail for name, _, detail in results}


def tensor_infos(info: TfliteModel, names: list[str], which: str,
                 source: dict[str, dict[str, Any]] | None = None) -> list[TensorInfo]:
    """Source-order tensor descriptions, matched through the signature's names; ``source`` adds
    per-name source layout/shape fields (ONNX)."""
    from edgepack.formats.base import signature_name

    sig = info.signature_inputs if which == "inputs" else info.signature_outputs
    graph = info.inputs if which == "inputs" else info.outputs
    out = []
    for pos, name in enumerate(names):
        idx = sig.get(signature_name(name))
        if idx is None:
            if len(names) != len(graph):
                raise ConversionError(f"cannot match the model's {which} to the TFLite model's")
            idx = graph[pos]
        t = info.tensor(idx)
        out.append(TensorInfo(name=name, tflite_name=t.name, index=t.index, shape=list(t.shape),
                              dtype=t.dtype, scale=t.scale, zero_point=t.zero_point,
                              shape_signature=list(t.shape_signature) if t.shape_signature else None,
                              **(source or {}).get(name, {})))
    return out


def _merged(*per_name: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in per_name:
        for name, fields_ in (d or {}).items():
            out.setdefault(name, {}).update(fields_)
    return out


def _sample_axes(st: PipelineState, which: str) -> dict[str, dict[str, Any]]:
    """Inputs without a sample axis, and the state outputs that feed them, say so (``sample_axis`` None)."""
    whole = {s.name for s in st.loaded.inputs if s.sample_axis is None}
    if which == "outputs" and whole:  # the state outputs, and any output whose first axis is not a batch of 1
        pairs = (st.graph or {}).get("state_pairs") or {}
        shapes = {n: st.info.tensor(i).shape for n, i in st.info.signature_outputs.items()}
        from edgepack.formats.base import signature_name

        whole = {out for inp, out in pairs.items() if inp in whole} | {
            n for n in st.loaded.output_names if len(shapes.get(signature_name(n), ())) and
            shapes[signature_name(n)][0] != 1}
    elif which == "outputs":
        whole = set()
    return {name: {"sample_axis": None} for name in whole}


def _request_record(st: PipelineState) -> dict[str, Any]:
    """The resolved request and the sha256 of each input file it names (edgepack reproduce)."""
    from edgepack.formats.base import file_sha256

    req = st.request.resolved()
    files = {}
    for role, path in req.input_files().items():
        sha = ((st.original or st.loaded).sha256 if role == "model"
               else st.task_metric.sha256 if role == "metric" and st.task_metric is not None  # the code that ran
               else file_sha256(path))
        files[role] = {"path": str(path), "sha256": sha}
    settings = req.to_dict()
    # where the bundle is written is not part of what it is: two runs into two folders match
    settings["output"] = {k: v for k, v in settings["output"].items() if k not in ("path", "force")}
    return {"settings": settings, "files": files}


def stage_package(st: PipelineState) -> dict:
    import edgepack

    req, info = st.request, st.info
    with bundle_mod.atomic_bundle(req.output.path, force=req.output.force, seen=st.output_seen) as writer:
        writer.add("model.tflite", st.tflite, role="model")
        if st.labels is not None:
            writer.add("labels.txt", "\n".join(st.labels) + "\n", role="labels")
        for relpath, (data, role) in st.extra_files.items():
            writer.add(relpath, data, role=role)
        manifest = Manifest(
            edgepack_version=edgepack.__version__,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            source=SourceInfo(file=req.model.path.name, format=(st.original or st.loaded).format.value,
                              sha256=st.loaded.sha256,
                              path=str(req.model.path.resolve())),
            target=TargetInfo(name=st.target.name, runtime=st.target.runtime, delegate=st.target.delegate),
            quantization=QuantizationInfo(mode=info.quantization_mode, requested=req.quantize.mode.value,
                                          granularity=info.granularity, calibration=st.calibration_info),
            artifacts=list(writer.artifacts),
            inputs=tensor_infos(info, [s.name for s in st.loaded.inputs], "inputs",
                                _merged(st.source_io.get("inputs"), st.input_data, _sample_axes(st, "inputs"))),
            outputs=tensor_infos(info, st.loaded.output_names, "outputs",
                                 _merged(st.source_io.get("outputs"), _sample_axes(st, "outputs"))),
            ops=info.op_counts,
            versions=edgepack.dependency_versions(),
            stages=list(st.stages),
            labels="labels.txt" if st.labels is not None else None,
            extras=st.manifest_sections(),
            request=_request_record(st),
            budget=st.budget,
        )
        validate_dict(manifest.to_dict())
        writer.write_text(MANIFEST_NAME, manifest.to_json())
        st.manifest = manifest
        report_seconds = _write_report(writer.staging)
    return {"path": str(req.output.path), "report_seconds": report_seconds}


def _write_report(staging) -> float | None:
    """report.html, rendered from the staged bundle's files; not an artifact (validate rewrites it), so
    the manifest neither lists nor hashes it. A page that fails to render costs the page, not the bundle."""
    from edgepack.report import write_bundle_report

    start = time.perf_counter()
    try:
        write_bundle_report(staging)
    except Exception as err:  # noqa: BLE001 - the bundle is complete without its page
        log.warning("report.html not written: %s: %s", type(err).__name__, err)
        return None
    return round(time.perf_counter() - start, 4)


def _holdout(req) -> int:
    """Calibration samples held out for the accuracy budget (0: no budget, or --eval-data given)."""
    if not req.budget.active or req.budget.eval_data is not None:
        return 0
    from edgepack.pipeline.budget import holdout_wanted

    return holdout_wanted(req.budget)
