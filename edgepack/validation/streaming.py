"""``edgepack validate --stream``: frame sequences through the bundle and the reference, each carrying
its own recurrent state from frame to frame, as a device runs a streaming model (a VAD over audio).

Per frame and output: SQNR against the reference; the worst frame; the decision agreement (a
one-value output thresholded, e.g. speech at 0.5; else the argmax) with its 95 % Wilson interval;
``--metric`` called frame by frame. Microcontroller bundles stream through TFLite Micro too.
The bundle's state pairs come from its manifest (``extras.graph.state_pairs``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calibration.layout import outputs_to_source
from edgepack.errors import UsageError
from edgepack.packaging.bundle import verify_artifacts, write_file_atomic
from edgepack.packaging.manifest import Manifest, TensorInfo, read_manifest
from edgepack.runtimes.isolated import IsolatedRunner
from edgepack.validation.frames import FrameSequence, npz_sequences, wav_sequences
from edgepack.validation.intervals import wilson_interval
from edgepack.validation.metrics import sqnr_db
from edgepack.validation.reference import as_converted, reference_outputs

log = logging.getLogger(__name__)
STREAM_REPORT = "validation_stream.json"


@dataclass
class StreamReport:
    bundle: str
    data: str
    reference: str | None
    runtimes: list[str]
    sequences: int = 0
    frames: int = 0
    threshold: float = 0.5
    state_pairs: dict[str, str] = field(default_factory=dict)
    # runtime -> output -> {min/median SQNR, worst frame, per-frame SQNR (None = identical)}
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # runtime -> output -> {agreement, interval, frames}
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_metric: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_pairs(manifest: Manifest) -> dict[str, str]:
    return dict((manifest.extras.get("graph") or {}).get("state_pairs") or {})


def _sample_shape(t: TensorInfo) -> tuple[int, ...]:
    """One sample of the tensor as data holds it (the whole tensor when it has no sample axis)."""
    return tuple(t.shape) if t.sample_axis is None else tuple(t.shape[1:])


def wants_stream(bundle: Path, data: Path | dict) -> bool:
    """A bundle with state pairs streams by default when the data holds no state (WAV audio, an .npz of
    frames without the state inputs)."""
    manifest = read_manifest(bundle)
    pairs = state_pairs(manifest)
    if not pairs or isinstance(data, dict):
        return False
    if data.is_dir() or data.suffix.lower() == ".wav":
        return True
    if data.suffix.lower() == ".npz":
        with np.load(data, allow_pickle=False) as z:
            return not any(name in z.files for name in pairs)
    return False


def read_sequences(manifest: Manifest, data: Path, hop: int | None) -> list[FrameSequence]:
    pairs = state_pairs(manifest)
    frame_inputs = [t for t in manifest.inputs if t.name not in pairs]
    if data.is_dir() or data.suffix.lower() == ".wav":
        if len(frame_inputs) != 1:
            raise UsageError(f"--stream {data}: WAV audio feeds a model with one frame input, this one has "
                             f"{len(frame_inputs)}", hint="give an .npz of frames keyed by input name")
        return wav_sequences(data, frame_inputs[0].name, _sample_shape(frame_inputs[0]), hop)
    return npz_sequences(data, {t.name: _sample_shape(t) for t in frame_inputs})


class _Tally:
    """Per-frame results of one runtime against the reference."""

    def __init__(self, outputs: list[TensorInfo], pairs: dict[str, str], threshold: float) -> None:
        self.outputs, self.threshold = outputs, threshold
        self.state_out = set(pairs.values())
        self.sqnr: dict[str, list[float]] = {t.name: [] for t in outputs}
        self.where: list[tuple[str, int]] = []
        self.agree: dict[str, int] = {t.name: 0 for t in outputs if t.name not in self.state_out}
        self.decided: dict[str, int] = dict.fromkeys(self.agree, 0)

    def add(self, seq: str, index: int, outs: list[np.ndarray], refs: list[np.ndarray]) -> None:
        self.where.append((seq, index))
        for t, o, r in zip(self.outputs, outs, refs):
            self.sqnr[t.name].append(sqnr_db(r, o))
            if t.name in self.agree:
                a, b = self._decisions(o, r)
                self.agree[t.name] += int(np.sum(a == b))
                self.decided[t.name] += a.size

    def _decisions(self, out: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One value, or probabilities that are not a distribution (a sequence model's per-window speech
        probabilities): each thresholded; else the argmax (class scores)."""
        o, r = np.asarray(out, np.float64).reshape(-1), np.asarray(ref, np.float64).reshape(-1)
        probabilities = r.min() >= 0 and r.max() <= 1 and abs(r.sum() - 1) > 1e-3
        if r.size == 1 or probabilities:
            return o >= self.threshold, r >= self.threshold
        return np.array([np.argmax(o)]), np.array([np.argmax(r)])

    def results(self) -> tuple[dict[str, Any], dict[str, Any]]:
        n = len(self.where)
        outputs = {}
        for name, values in self.sqnr.items():
            arr = np.asarray(values)
            worst = int(np.argmin(arr))
            outputs[name] = {"min_sqnr_db": _num(arr.min()), "median_sqnr_db": _num(float(np.median(arr))),
                             "worst_frame": {"sequence": self.where[worst][0], "frame": self.where[worst][1],
                                             "sqnr_db": _num(arr[worst])},
                             "frames_below_60db": int(np.sum(arr < 60)),
                             "state": name in self.state_out, "per_frame_sqnr_db": [_num(v) for v in values]}
        decisions = {}
        for name, k in self.agree.items():
            total = self.decided[name]
            iv = wilson_interval(k, total)
            lo, hi = iv.low, iv.high
            decisions[name] = {"agreement": round(k / total, 6) if total else None, "agreeing": k, "decisions": total,
                               "frames": n, "interval95": [round(lo, 6), round(hi, 6)]}
        return outputs, decisions


def _num(v: float) -> float | None:
    """JSON-safe dB: None for an identical frame (infinite SQNR)."""
    return None if math.isinf(v) and v > 0 else round(float(v), 3)


def validate_stream(bundle: Path, data: Path, *, reference: Path | None = None, runtime: str = "litert",
                    threshold: float = 0.5, hop: int | None = None, metric: str | None = None,
                    trust_model: bool = False) -> StreamReport:
    """Stream ``data``'s frame sequences through the bundle and the reference (each carrying its own
    state, zeros at the start of every sequence); write ``validation_stream.json`` into the bundle."""
    from edgepack.formats.detect import load_model
    from edgepack.tflite_model import read_tflite
    from edgepack.validation.validate import resolve_reference

    start = time.perf_counter()
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest.artifacts)
    pairs = state_pairs(manifest)
    if not pairs:
        raise UsageError(f"--stream: {bundle} records no recurrent state pairs",
                         hint="convert with --state INPUT=OUTPUT (the output that feeds the input at the next frame)")
    model_path = bundle / manifest.artifact("model").path
    read_tflite(model_path)  # verified before any interpreter sees it
    task = None
    if metric is not None:
        from edgepack.validation.metrics import TaskMetric

        task = TaskMetric(metric)
    ref_path = resolve_reference(manifest, reference, bundle, trust_model=trust_model)
    if ref_path is None:
        raise UsageError("--stream compares the bundle with the source model, and there is none",
                         hint="pass --reference MODEL")
    loaded = as_converted(load_model(ref_path, trust_model=trust_model), manifest)
    sequences = read_sequences(manifest, data, hop)
    kinds = [runtime] + (["tflm"] if manifest.target.runtime == "tflm" and runtime != "tflm" else [])
    report = StreamReport(str(bundle), str(data), str(ref_path), kinds, sequences=len(sequences),
                          threshold=threshold, state_pairs=pairs)
    tallies = {k: _Tally(manifest.outputs, pairs, threshold) for k in kinds}
    scores: list[float] = []
    with contextlib.ExitStack() as stack:
        runners = {k: stack.enter_context(_runner(k, model_path, manifest)) for k in kinds}
        for seq in sequences:
            _run_sequence(seq, manifest, pairs, loaded, runners, tallies, task, scores)
            report.frames += len(seq)
    for kind, tally in tallies.items():
        report.outputs[kind], report.decisions[kind] = tally.results()
    if task is not None and scores:
        report.task_metric = {"metric": task.spec, "mean": round(float(np.mean(scores)), 6),
                              "min": round(float(np.min(scores)), 6), "frames": len(scores)}
    report.seconds = round(time.perf_counter() - start, 3)
    write_file_atomic(bundle / STREAM_REPORT, json.dumps(report.to_dict(), indent=1) + "\n")
    return report


def _runner(kind: str, model_path: Path, manifest: Manifest) -> IsolatedRunner:
    arena = None
    if kind == "tflm":
        from edgepack.runtimes.tflm import measure_arena

        arena = measure_arena(model_path.read_bytes(), len(manifest.inputs)).total
    return IsolatedRunner(kind, model_path, manifest.inputs, manifest.outputs, arena=arena)


def _run_sequence(seq: FrameSequence, manifest: Manifest, pairs: dict[str, str], loaded, runners: dict,
                  tallies: dict[str, _Tally], task, scores: list[float]) -> None:
    """One sequence, frame by frame: every runtime and the reference carry their own state."""
    by_name = {t.name: t for t in manifest.inputs}
    out_index = {t.name: i for i, t in enumerate(manifest.outputs)}
    perms = [t.perm for t in manifest.outputs]
    zero = {name: np.zeros(_sample_shape(by_name[name]), np.float32) for name in pairs}
    states = {kind: dict(zero) for kind in [*runners, "reference"]}
    for index in range(len(seq)):
        frame = {name: np.asarray(frames[index], np.float32)[None] for name, frames in seq.frames.items()}
        ref = [np.asarray(r) for r in reference_outputs(loaded, {**frame, **{k: v[None] for k, v in
                                                                              states["reference"].items()}})]
        states["reference"] = {i: ref[out_index[o]][0] for i, o in pairs.items()}
        for kind, run in runners.items():
            tfl_frame = {k: _to_tflite(v, by_name[k]) for k, v in frame.items()}
            outs = outputs_to_source(run({**tfl_frame, **{k: v[None] for k, v in states[kind].items()}}), perms)
            states[kind] = {i: np.asarray(outs[out_index[o]][0], np.float32) for i, o in pairs.items()}
            tallies[kind].add(seq.name, index, outs, ref)
            if task is not None and kind == next(iter(runners)):
                scores.append(task(outs, ref, None))


def _to_tflite(batch: np.ndarray, t: TensorInfo) -> np.ndarray:
    """A frame given in the source layout (ONNX NCHW) in the bundle's."""
    return np.transpose(batch, t.perm) if t.perm and batch.ndim == len(t.perm) else batch
