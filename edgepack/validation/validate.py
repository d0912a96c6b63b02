"""``edgepack validate``: run the bundle on device runtimes, compare with the source model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgepack.calibration.evaluate import RangeWatch, evaluation_data
from edgepack.calibration.layout import outputs_to_source
from edgepack.calibration.progress import progress_bar
from edgepack.errors import BundleError, ValidationFailed
from edgepack.packaging.bundle import verify_artifacts, write_file_atomic
from edgepack.packaging.manifest import read_manifest
from edgepack.runtimes.litert import Runtime, run_tflite
from edgepack.validation import metrics
from edgepack.validation.data import read_bundle_data, source_specs
from edgepack.validation.reference import run_reference
from edgepack.validation.report import OutputComparison, ValidationReport, finite_or_none

log = logging.getLogger(__name__)
REPORT_NAME = "validation.json"


def _resolve_reference(manifest, reference: Path | None, bundle: Path) -> Path | None:
    if reference is not None:
        if not reference.exists():
            raise BundleError(f"--reference {reference}: no such file or directory")
        return reference
    src = manifest.source.path
    if src and Path(src).exists():
        return Path(src)
    log.warning("source model %s no longer exists; validating without a reference (pass --reference)",
                src or manifest.source.file)
    return None


def validate_bundle(bundle: Path, data: Path | dict[str, Path], *, reference: Path | None = None,
                    runtime: Runtime = Runtime.LITERT, max_drop: float | None = None, trust_model: bool = False,
                    progress: Callable[[int], None] | None = None, preprocess: str | None = None,
                    recipe: Path | None = None, label_column: str | None = None) -> ValidationReport:
    start = time.perf_counter()
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory", hint="give the -o folder of 'edgepack convert'")
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest.artifacts)
    model_path = bundle / manifest.artifact("model").path
    ref_path = _resolve_reference(manifest, reference, bundle)
    loaded = None
    if ref_path is not None:
        from edgepack.converter.formats.detect import load_model

        loaded = load_model(ref_path, trust_model=trust_model)
    specs = loaded.inputs if loaded is not None else source_specs(manifest.inputs)
    if any(t.perm for t in manifest.inputs):
        # ONNX bundles: data in the ONNX layout (NCHW) or the TFLite one; outputs compared in ONNX layout
        ds, ds_tflite = read_bundle_data(bundle, manifest, data, specs, preprocess=preprocess, recipe=recipe,
                                         label_column=label_column)
    else:  # any source (folders, CSV, per-input), with the recorded preprocessing applied
        ds = ds_tflite = evaluation_data(bundle, manifest, data, specs, preprocess=preprocess, recipe=recipe,
                                         label_column=label_column)
    watch = RangeWatch(manifest.inputs, len(ds))
    with progress_bar(len(ds), f"validating on {runtime.value}") as advance:
        def step(n: int) -> None:
            advance(n)
            if progress:
                progress(n)

        outs = outputs_to_source(run_tflite(runtime, model_path, manifest.inputs, manifest.outputs,
                                            ds_tflite.observe(watch.observe), step),
                                 [t.perm for t in manifest.outputs])
    report = ValidationReport(bundle=str(bundle), runtime=runtime.value, data=str(data), samples=len(ds),
                              mode=manifest.quantization.mode, reference=str(ref_path) if ref_path else None,
                              max_drop_pp=max_drop)
    for warning in watch.warnings():
        log.warning("%s", warning)
        report.notes.append(warning)
    if ds.labels is not None:
        report.accuracy_bundle = metrics.accuracy(outs[0], ds.labels)
    if manifest.target.runtime == "tflm":  # microcontroller targets: TFLM too, on the same data
        from edgepack.validation.on_tflm import compare_with_litert

        report.runtimes["tflm"] = compare_with_litert(model_path, manifest, ds, outs, report.notes)
    if loaded is not None:
        refs = run_reference(loaded, ds)
        if ds.labels is not None:
            report.accuracy_reference = metrics.accuracy(refs[0], ds.labels)
        report.top1_agreement = metrics.top1_agreement(refs[0], outs[0])
        for t, ref, out in zip(manifest.outputs, refs, outs):
            report.outputs.append(OutputComparison(
                name=t.name, max_abs_error=metrics.max_abs_error(ref, out),
                cosine_similarity=metrics.cosine_similarity(ref, out),
                sqnr_db=finite_or_none(metrics.sqnr_db(ref, out))))
    _judge(report, max_drop)
    report.seconds = round(time.perf_counter() - start, 3)
    write_file_atomic(bundle / REPORT_NAME, report.to_json())
    return report


def _judge(report: ValidationReport, max_drop: float | None) -> None:
    """Collect every failure; the caller raises once."""
    if max_drop is None:
        return
    drop = report.accuracy_drop_pp
    if drop is None:
        report.failures.append("--max-drop needs labelled data (y) and a reference model to compare with")
    elif drop > max_drop:
        report.failures.append(f"accuracy dropped {drop:.2f} pp (reference {report.accuracy_reference * 100:.2f}% "
                               f"-> bundle {report.accuracy_bundle * 100:.2f}%), over --max-drop {max_drop:g}")


def raise_if_failed(report: ValidationReport) -> None:
    if report.failures:
        raise ValidationFailed("validation failed: " + "; ".join(report.failures),
                               hint=f"see {Path(report.bundle) / REPORT_NAME}")
