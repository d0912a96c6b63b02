"""The conversion pipeline: a straight line of small, timed stages.

prepare → load → optimize (--prune/--qat) → calibrate → convert → read back → measure (optimization
results, TFLM arena) → check target → vela (Ethos-U) → firmware (MCU sources) → package.
Stages that do not apply to a request or target return None and change nothing.
Each stage appends a :class:`StageRecord` (name, seconds, detail) that ends up in the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgepack.calibration import Dataset
from edgepack.converter import mcu, optimize
from edgepack.converter.load import LoadedModel, ModelFormat, load_model
from edgepack.converter.request import ConvertRequest, QuantizeMode
from edgepack.errors import ConversionError, EdgepackError, InternalError, UsageError
from edgepack.packaging import bundle as bundle_mod
from edgepack.packaging.manifest import (MANIFEST_NAME, CalibrationInfo, Manifest, QuantizationInfo,
                                         SourceInfo, StageRecord, TargetInfo, TensorInfo, validate_dict)
from edgepack.targets import TargetSpec, load_target
from edgepack.targets.checks import ModelFacts, run_checks
from edgepack.tflite_model import TfliteModel, read_tflite

log = logging.getLogger(__name__)


@dataclass
class PipelineState:
    """What the stages hand each other. Only the pipeline mutates it."""

    request: ConvertRequest
    target: TargetSpec | None = None
    loaded: LoadedModel | None = None
    calibration: Dataset | None = None
    calibration_info: CalibrationInfo | None = None
    tflite: bytes = b""
    info: TfliteModel | None = None
    labels: list[str] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    # Optional stages add files to the bundle (relpath -> (data, role)) and manifest sections.
    extra_files: dict[str, tuple[bytes | str, str]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    arena_bytes: int | None = None  # TFLM tensor arena, measured (microcontroller targets)
    vela_model: bytes | None = None  # Ethos-U targets: the Vela-compiled model
    # ONNX: per "inputs"/"outputs", source name -> TensorInfo's source layout/shape fields
    source_io: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Per input name: the manifest's `preprocessing` spec and calibration data `statistics`
    input_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --prune/--qat: the model as loaded, kept when `loaded` is replaced by the optimized one
    original: LoadedModel | None = None
    manifest: Manifest | None = None


Stage = Callable[[PipelineState], "dict[str, Any] | None"]


def stage_prepare(st: PipelineState) -> dict:
    req = st.request
    bundle_mod.check_output(req.output, req.force)
    st.target = load_target(req.target)
    if req.quantize.value not in st.target.quantize_modes:
        raise UsageError(f"--quantize {req.quantize} is not supported by target {st.target.name}",
                         hint=f"use one of: {', '.join(st.target.quantize_modes)}")
    if req.quantize.needs_calibration and req.calibration_data is None:
        raise UsageError(f"--quantize {req.quantize} needs calibration data",
                         hint="pass --calibration FILE (.npy or .npz of representative inputs), "
                              "or choose --quantize dynamic/float16/none")
    if req.calibration_data is not None and not req.quantize.needs_calibration:
        log.warning("--calibration is not used by --quantize %s; ignoring it", req.quantize)
    if req.calibration_samples < 1:
        raise UsageError("--calibration-samples must be at least 1")
    if req.labels is not None:
        st.labels = _read_labels(req.labels)
    return {"target": st.target.name}


def _read_labels(path: Path) -> list[str]:
    try:
        labels = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise UsageError(f"--labels {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--labels {path}: cannot read as UTF-8 text ({err})") from err
    if not labels:
        raise UsageError(f"--labels {path}: file has no labels", hint="one label per line")
    return labels


def stage_load(st: PipelineState) -> dict:
    st.loaded = load_model(st.request.model, trust_model=st.request.trust_model)
    if st.request.onnx2tf_options and st.loaded.format is not ModelFormat.ONNX:
        raise UsageError("--onnx2tf-option applies to ONNX models only")
    if st.request.input_shapes:
        if st.loaded.format is not ModelFormat.ONNX:
            raise UsageError("--input-shape applies to ONNX models only",
                             hint="Keras and SavedModel inputs keep the shapes they were built with")
        from edgepack.converter.onnx_model import with_input_shapes

        st.loaded = with_input_shapes(st.loaded, dict(st.request.input_shapes))
    if st.labels is not None and len(st.loaded.output_names) == 1:
        classes = _output_classes(st.loaded)
        if classes is not None and classes != len(st.labels):
            raise UsageError(f"--labels {st.request.labels}: {len(st.labels)} labels for an output of "
                             f"{classes} classes", hint="give one label per output class, one per line")
    return {"format": st.loaded.format.value, "inputs": len(st.loaded.inputs), "outputs": len(st.loaded.output_names)}


def _output_classes(loaded: LoadedModel) -> int | None:
    model = loaded.model
    shape = getattr(model.outputs[0], "shape", None) if hasattr(model, "outputs") else None
    return int(shape[-1]) if shape is not None and shape[-1] is not None else None


def stage_calibrate(st: PipelineState) -> dict | None:
    from edgepack.calibration.calibrate import calibration_set, input_preprocessing

    req = st.request
    if not req.quantize.needs_calibration:
        if req.preprocess is not None or req.recipe is not None:  # recorded for the device app all the same
            pre = input_preprocessing(st.loaded.inputs, spec=req.preprocess, recipe=req.recipe)
            st.input_data = {k: {"preprocessing": p.to_dict() if p else None} for k, p in pre.items()}
        return None
    specs = st.loaded.inputs
    if st.loaded.format is ModelFormat.ONNX:  # ONNX (NCHW) or TFLite (NHWC) layout: resolved at convert
        from edgepack.converter.layout import relaxed_specs

        specs = relaxed_specs(specs)
    cal = calibration_set(req.calibration_data, specs, count=req.calibration_samples, seed=req.seed,
                          spec=req.preprocess, recipe=req.recipe, label_column=req.label_column,
                          min_samples=st.target.min_calibration_samples, target=st.target.name)
    st.calibration = cal.data
    st.calibration_info = CalibrationInfo(source=cal.source, samples=len(cal.data), available=cal.available,
                                          seed=req.seed, sha256=cal.sha256)
    st.input_data = {k: {"preprocessing": cal.preprocessing[k], "statistics": cal.statistics[k]}
                     for k in cal.data.names}
    return {"samples": len(cal.data), "available": cal.available, "warnings": len(cal.warnings)}


def stage_convert(st: PipelineState) -> dict:
    from edgepack.converter.tflite import convert_to_tflite

    if st.loaded.format is ModelFormat.ONNX:
        return _convert_onnx(st)
    st.tflite = convert_to_tflite(st.loaded, st.request.quantize, st.calibration,
                                  per_tensor=st.request.per_tensor, verbose=st.request.verbose,
                                  batch=st.target.batch)
    return {"bytes": len(st.tflite)}


def _convert_onnx(st: PipelineState) -> dict:
    from edgepack.converter.onnx_convert import convert_onnx

    req = st.request
    res = convert_onnx(st.loaded, req.quantize, st.calibration, per_tensor=req.per_tensor, verbose=req.verbose,
                       batch=st.target.batch, onnx2tf_options=dict(req.onnx2tf_options))
    st.tflite = res.tflite
    st.source_io = {"inputs": {m.name: m.manifest_fields() for m in res.inputs},
                    "outputs": {m.name: m.manifest_fields() for m in res.outputs}}
    return {"bytes": len(st.tflite), **res.detail}


def stage_read_back(st: PipelineState) -> dict:
    st.info = read_tflite(st.tflite)
    actual, requested = st.info.quantization_mode, st.request.quantize.value
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
                       arena_bytes=st.arena_bytes)
    results = run_checks(st.target, facts)
    return {name: detail for name, _, detail in results}


def tensor_infos(info: TfliteModel, names: list[str], which: str,
                 source: dict[str, dict[str, Any]] | None = None) -> list[TensorInfo]:
    """Source-order tensor descriptions, matched through the signature's names; ``source`` adds
    per-name source layout/shape fields (ONNX)."""
    from edgepack.converter.tflite import signature_name

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


def stage_package(st: PipelineState) -> dict:
    import edgepack

    req, info = st.request, st.info
    with bundle_mod.atomic_bundle(req.output, force=req.force) as writer:
        writer.add("model.tflite", st.tflite, role="model")
        if st.labels is not None:
            writer.add("labels.txt", "\n".join(st.labels) + "\n", role="labels")
        for relpath, (data, role) in st.extra_files.items():
            writer.add(relpath, data, role=role)
        manifest = Manifest(
            edgepack_version=edgepack.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=SourceInfo(file=req.model.name, format=(st.original or st.loaded).format.value,
                              sha256=st.loaded.sha256,
                              path=str(req.model.resolve())),
            target=TargetInfo(name=st.target.name, runtime=st.target.runtime, delegate=st.target.delegate),
            quantization=QuantizationInfo(mode=info.quantization_mode, requested=req.quantize.value,
                                          granularity=info.granularity, calibration=st.calibration_info),
            artifacts=list(writer.artifacts),
            inputs=tensor_infos(info, [s.name for s in st.loaded.inputs], "inputs",
                                _merged(st.source_io.get("inputs"), st.input_data)),
            outputs=tensor_infos(info, st.loaded.output_names, "outputs", st.source_io.get("outputs")),
            ops=info.op_counts,
            versions=edgepack.dependency_versions(),
            stages=list(st.stages),
            labels="labels.txt" if st.labels is not None else None,
            extras=st.extras,
        )
        validate_dict(manifest.to_dict())
        writer.write_text(MANIFEST_NAME, manifest.to_json())
        st.manifest = manifest
    return {"path": str(req.output)}


STAGES: tuple[tuple[str, Stage], ...] = (
    ("prepare", stage_prepare),
    ("load", stage_load),
    ("optimize", optimize.stage_optimize),
    ("calibrate", stage_calibrate),
    ("convert", stage_convert),
    ("read_back", stage_read_back),
    ("measure_optimized", optimize.stage_measure),
    ("measure_arena", mcu.stage_measure_arena),
    ("check_target", stage_check_target),
    ("vela", mcu.stage_vela),
    ("firmware", mcu.stage_firmware),
    ("package", stage_package),
)


def run_pipeline(request: ConvertRequest, stages=None,
                 progress: Callable[[str], None] | None = None) -> PipelineState:
    st = PipelineState(request=request)
    for name, stage in STAGES if stages is None else stages:
        if progress:
            progress(name)
        start = time.perf_counter()
        try:
            detail = stage(st)
        except (EdgepackError, KeyboardInterrupt):
            raise
        except Exception as err:  # anything else is a bug here or in a library: name the stage
            raise InternalError(name, err) from err
        if name != "package":
            st.stages.append(StageRecord(name, round(time.perf_counter() - start, 4), detail or {}))
        log.info("stage %s: %.2fs %s", name, time.perf_counter() - start, detail or "")
    return st

