"""``edgepack validate``: run the bundle on device runtimes, compare with the source model."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgepack.calibration import Dataset
from edgepack.calibration.evaluate import RangeWatch, evaluation_data
from edgepack.calibration.layout import outputs_to_source
from edgepack.calibration.progress import progress_bar
from edgepack.errors import BundleError, ModelLoadError, UsageError, ValidationFailed
from edgepack.packaging.bundle import verify_artifacts, write_file_atomic
from edgepack.packaging.manifest import check_model_tensors, read_manifest
from edgepack.packaging.tempdirs import run_tempdir
from edgepack.runtimes.isolated import IsolatedRunner
from edgepack.runtimes.litert import Runtime
from edgepack.tflite_model import read_tflite
from edgepack.validation.data import read_bundle_data, source_specs
from edgepack.validation.evaluation import Evaluation
from edgepack.validation.intervals import CONFIDENCE
from edgepack.validation.reference import as_converted, reference_outputs
from edgepack.validation.report import ValidationReport

log = logging.getLogger(__name__)
REPORT_NAME = "validation.json"
CHUNK = 64  # samples in flight: memory stays at a chunk whatever the data size


def resolve_reference(manifest, reference: Path | None, bundle: Path, *, trust_model: bool = False) -> Path | None:
    """The reference model: ``--reference``, else the manifest's recorded source (checked). Trust is
    given to a file the person names: ``--trust-model`` needs ``--reference``."""
    if trust_model and reference is None:
        from edgepack.errors import UsageError

        raise UsageError("--trust-model applies to a --reference you name, not to the source path a bundle records",
                         hint="add --reference MODEL (the model you trust)")
    if reference is not None:
        if not reference.exists():
            raise BundleError(f"--reference {reference}: no such file or directory")
        return reference
    src = manifest.source.path
    if src and Path(src).exists():
        # the manifest is data: follow its path only to a regular file within the limit whose hash is the recorded one
        from edgepack.validation.inputs import MAX_MODEL_BYTES, check_recorded

        check_recorded(Path(src), manifest.source.sha256, f"{bundle}: the manifest's source model",
                       limit=MAX_MODEL_BYTES, folders=manifest.source.format == "saved_model",
                       hint="pass --reference MODEL to compare with a model you name")
        return Path(src)
    log.warning("source model %s no longer exists; validating without a reference (pass --reference)",
                src or manifest.source.file)
    return None


def validate_bundle(bundle: Path, data: Path | dict[str, Path], *, reference: Path | None = None,
                    runtime: Runtime = Runtime.LITERT, max_drop: float | None = None, trust_model: bool = False,
                    progress: Callable[[int], None] | None = None, preprocess: str | None = None,
                    recipe: Path | None = None, label_column: str | None = None,
                    metric: str | None = None, confidence: float = CONFIDENCE) -> ValidationReport:
    """Stream ``data`` through the bundle (in an isolated child per runtime) and the reference,
    chunk by chunk: memory stays at a chunk whatever the data size; metrics are running sums."""
    start = time.perf_counter()
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory", hint="give the -o folder of 'edgepack convert'")
    task = None
    if metric is not None:  # the user's metric file, read before any data is
        from edgepack.validation.metrics import TaskMetric

        task = TaskMetric(metric)
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest.artifacts)
    model_path = bundle / manifest.artifact("model").path
    info = read_tflite(model_path)  # the flatbuffer is verified before any interpreter sees it
    check_model_tensors(manifest, info, str(bundle))  # the scales used below are the model's own
    ref_path = resolve_reference(manifest, reference, bundle, trust_model=trust_model)
    loaded = None
    if ref_path is not None:
        from edgepack.formats.detect import load_model

        loaded = as_converted(load_model(ref_path, trust_model=trust_model), manifest)
        _check_reference_io(loaded, manifest, ref_path)
    elif task is not None:
        raise UsageError("--metric compares the bundle with the source model, and there is none",
                         hint="pass --reference MODEL")
    specs = loaded.inputs if loaded is not None else source_specs(manifest.inputs)
    if any(t.perm for t in manifest.inputs):
        # ONNX bundles: data in the ONNX layout (NCHW) or the TFLite one; outputs compared in ONNX layout
        ds, ds_tflite = read_bundle_data(bundle, manifest, data, specs, preprocess=preprocess, recipe=recipe,
                                         label_column=label_column)
    else:  # any source (folders, CSV, per-input), with the recorded preprocessing applied
        ds = ds_tflite = evaluation_data(bundle, manifest, data, specs, preprocess=preprocess, recipe=recipe,
                                         label_column=label_column)
    report = ValidationReport(bundle=str(bundle), runtime=runtime.value, data=str(data), samples=len(ds),
                              mode=manifest.quantization.mode, reference=str(ref_path) if ref_path else None,
                              max_drop_pp=max_drop)
    watch = RangeWatch(manifest.inputs, len(ds))
    ev = Evaluation(manifest, labelled=ds.labels is not None, reference=loaded is not None,
                    tflm=manifest.target.runtime == "tflm", task=task, confidence=confidence)
    _stream(ev, runtime, model_path, len(info.inputs), _chunks(ds, ds_tflite.observe(watch.observe), loaded),
            len(ds), reference=(loaded, ref_path), progress=progress)
    for warning in watch.warnings():
        log.warning("%s", warning)
        report.notes.append(warning)
    ev.fill(report)
    _judge(report, max_drop)
    report.seconds = round(time.perf_counter() - start, 3)
    write_file_atomic(bundle / REPORT_NAME, report.to_json())
    _update_page(bundle)
    return report


def _update_page(bundle: Path) -> None:
    """report.html shows the last validation: rewritten after every one (a failure to render costs the
    page, not the validation)."""
    from edgepack.report import write_bundle_report

    try:
        write_bundle_report(bundle)
    except Exception as err:  # noqa: BLE001 - validation.json is written; the page is a view of it
        log.warning("report.html not updated: %s: %s", type(err).__name__, err)


def _stream(ev: Evaluation, runtime: Runtime, model_path: Path, graph_inputs: int, chunks, total: int, *,
            reference: tuple, progress: Callable[[int], None] | None) -> None:
    """One pass over the data: each chunk through the runtime(s), then the reference, into ``ev``."""
    manifest = ev.manifest
    loaded, ref_path = reference
    perms = [t.perm for t in manifest.outputs]
    with contextlib.ExitStack() as stack:
        stack.enter_context(run_tempdir())  # the TFLM probe's folder, found by the next run if this one is killed
        run = stack.enter_context(IsolatedRunner(runtime.value, model_path, manifest.inputs, manifest.outputs))
        tflm_run = None
        if ev.tflm is not None:  # microcontroller targets: TFLM too, on the same data
            from edgepack.runtimes.tflm import measure_arena

            ev.arena = measure_arena(model_path.read_bytes(), graph_inputs)
            tflm_run = stack.enter_context(IsolatedRunner("tflm", model_path, manifest.inputs, manifest.outputs,
                                                          arena=ev.arena.total))
        advance = stack.enter_context(progress_bar(total, f"validating on {runtime.value}"))
        for chunk, src_chunk, labels in chunks:
            outs = outputs_to_source(run(chunk), perms)
            ev.bundle(outs, labels)
            if tflm_run is not None:
                ev.micro(outputs_to_source(tflm_run(chunk), perms), outs, labels)
            if loaded is not None:
                ev.compare(_reference(loaded, src_chunk, ref_path), outs, labels,
                           samples=len(next(iter(chunk.values()))))
            advance(len(outs[0]))
            if progress:
                progress(len(outs[0]))


def _chunks(ds: Dataset, ds_tflite: Dataset, loaded) -> Iterator[tuple[dict, dict, np.ndarray | None]]:
    """``(TFLite-layout chunk, source-layout chunk, labels)``; one read per chunk when the layouts agree."""
    dtypes = {s.name: s.dtype for s in loaded.inputs} if loaded is not None else None
    labels = ds.labels
    pos = 0
    if ds_tflite.sources is ds.sources:  # same data, same layout (observe() made a view)
        pairs = ((c, c) for c in ds_tflite.batches(CHUNK))
    else:
        pairs = zip(ds_tflite.batches(CHUNK), ds.batches(CHUNK))
    for tfl, src in pairs:
        n = len(next(iter(tfl.values())))
        if dtypes is not None:
            src = {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in src.items()}
        yield tfl, src, None if labels is None else np.asarray(labels[pos:pos + n])
        pos += n


def _reference(loaded, chunk: dict[str, np.ndarray], ref_path: Path) -> list[np.ndarray]:
    try:
        return reference_outputs(loaded, chunk)
    except Exception as err:  # any framework's failure on the data: one line naming the model
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(f"--reference {ref_path}: the model failed on the data ({type(err).__name__}: {first})",
                             hint="pass the model the bundle was converted from") from err


def _check_reference_io(loaded, manifest, ref_path: Path) -> None:
    """The reference takes the bundle's inputs and gives as many outputs, or one line says which differ."""
    ref_in = sorted(s.name for s in loaded.inputs)
    bundle_in = sorted(t.name for t in manifest.inputs)
    if ref_in != bundle_in:
        raise ModelLoadError(f"--reference {ref_path}: its inputs {ref_in} differ from the bundle's {bundle_in}",
                             hint="pass the model the bundle was converted from")
    if len(loaded.output_names) != len(manifest.outputs):
        raise ModelLoadError(f"--reference {ref_path}: it has {len(loaded.output_names)} outputs "
                             f"{list(loaded.output_names)}, the bundle {len(manifest.outputs)} "
                             f"{[t.name for t in manifest.outputs]}",
                             hint="pass the model the bundle was converted from")


def _judge(report: ValidationReport, max_drop: float | None) -> None:
    """Collect every failure; the caller raises once. A drop passes when its interval's upper bound is
    within --max-drop (the figure alone, on few samples, says little)."""
    if max_drop is None:
        return
    level = f"{report.confidence * 100:g}%"
    if report.task_metric is not None:
        tm = report.task_metric
        high = (report.intervals.get("task_metric_drop_pp") or {}).get("high", tm["drop_pp"])
        if tm["drop_pp"] > max_drop or high > max_drop:
            report.failures.append(f"task metric {tm['metric']} dropped {tm['drop_pp']:.2f} pp (reference "
                                   f"{tm['reference']:.4f} -> bundle {tm['bundle']:.4f}; {level} upper bound "
                                   f"{high:.2f} pp on {report.samples} samples), over --max-drop {max_drop:g}")
        return
    drop = report.accuracy_drop_pp
    if drop is None:
        report.failures.append("--max-drop needs labelled data (y) and a reference model to compare with")
        return
    high = (report.intervals.get("accuracy_drop_pp") or {}).get("high", drop)
    if drop > max_drop or high > max_drop:
        report.failures.append(f"accuracy dropped {drop:.2f} pp (reference {report.accuracy_reference * 100:.2f}% "
                               f"-> bundle {report.accuracy_bundle * 100:.2f}%; {level} upper bound {high:.2f} pp "
                               f"on {report.samples} samples), over --max-drop {max_drop:g}")


def raise_if_failed(report: ValidationReport) -> None:
    if report.failures:
        raise ValidationFailed("validation failed: " + "; ".join(report.failures),
                               hint=f"see {Path(report.bundle) / REPORT_NAME}")
