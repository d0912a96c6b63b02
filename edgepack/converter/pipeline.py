"""The conversion pipeline: a straight line of small, timed stages.

prepare → load → calibrate → convert → read back → check target → package.
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
from edgepack.converter.load import LoadedModel, load_model
from edgepack.converter.request import ConvertRequest, QuantizeMode
from edgepack.errors import ConversionError, UsageError
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
    manifest: Manifest | None = None


Stage = Callable[[PipelineState], "dict[str, Any] | None"]


def stage_prepare(st: PipelineState) -> dict:
    req = st.request
    bundle_mod.check_output(req.output, req.force)
    st.target = load_target(req.target)
    if req.quantize.value not in st.target.quantize_modes:
        raise UsageError(f"--quantize {req.quantize} is not supported by target {st.target.name}",
                         hint=f"use one of: {', '.join(st.target.quantize_modes)}")
    if req.quantize.needs_calibration and req.calibration is None:
        raise UsageError(f"--quantize {req.quantize} needs calibration data",
                         hint="pass --calibration FILE (.npy or .npz of representative inputs), "
                              "or choose --quantize dynamic/float16/none")
    if req.calibration is not None and not req.quantize.needs_calibration:
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
    req = st.request
    if not req.quantize.needs_calibration:
        return None
    full = Dataset.from_file(req.calibration, st.loaded.inputs, what="--calibration")
    min_n = st.target.min_calibration_samples
    chosen = full.select(req.calibration_samples, req.seed)
    if len(chosen) < min_n:
        log.warning("calibrating with %d samples, fewer than target %s's minimum of %d; "
                    "int8 accuracy may suffer", len(chosen), st.target.name, min_n)
    st.calibration = chosen
    st.calibration_info = CalibrationInfo(source=Path(req.calibration).name, samples=len(chosen),
                                          available=len(full), seed=req.seed, sha256=chosen.sha256())
    return {"samples": len(chosen), "available": len(full)}


def stage_convert(st: PipelineState) -> dict:
    from edgepack.converter.tflite import convert_to_tflite

    st.tflite = convert_to_tflite(st.loaded, st.request.quantize, st.calibration,
                                  per_tensor=st.request.per_tensor, verbose=st.request.verbose)
    return {"bytes": len(st.tflite)}


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
    facts = ModelFacts(mode=st.info.quantization_mode, size=len(st.tflite), op_counts=st.info.op_counts)
    results = run_checks(st.target, facts)
    return {name: detail for name, _, detail in results}


def tensor_infos(info: TfliteModel, names: list[str], which: str) -> list[TensorInfo]:
    """Source-order tensor descriptions, matched through the signature's names."""
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
                              shape_signature=list(t.shape_signature) if t.shape_signature else None))
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
            source=SourceInfo(file=req.model.name, format=st.loaded.format.value, sha256=st.loaded.sha256,
                              path=str(req.model.resolve())),
            target=TargetInfo(name=st.target.name, runtime=st.target.runtime, delegate=st.target.delegate),
            quantization=QuantizationInfo(mode=info.quantization_mode, requested=req.quantize.value,
                                          granularity=info.granularity, calibration=st.calibration_info),
            artifacts=list(writer.artifacts),
            inputs=tensor_infos(info, [s.name for s in st.loaded.inputs], "inputs"),
            outputs=tensor_infos(info, st.loaded.output_names, "outputs"),
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
    ("calibrate", stage_calibrate),
    ("convert", stage_convert),
    ("read_back", stage_read_back),
    ("check_target", stage_check_target),
    ("package", stage_package),
)


def run_pipeline(request: ConvertRequest, stages=STAGES,
                 progress: Callable[[str], None] | None = None) -> PipelineState:
    st = PipelineState(request=request)
    for name, stage in stages:
        if progress:
            progress(name)
        start = time.perf_counter()
        detail = stage(st)
        if name != "package":
            st.stages.append(StageRecord(name, round(time.perf_counter() - start, 4), detail or {}))
        log.info("stage %s: %.2fs %s", name, time.perf_counter() - start, detail or "")
    return st

