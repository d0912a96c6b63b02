"""Everything ``validate`` measures, accumulated chunk by chunk (running sums, nothing kept per sample,
except with ``--metric``: the user's task metric sees all outputs at once)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgepack.errors import ModelLoadError
from edgepack.validation.confusion import RunningConfusion
from edgepack.validation.intervals import (
    CONFIDENCE,
    Interval,
    agreement_interval,
    paired_drop_interval,
    per_sample_slice_sums,
    task_drop_interval,
    wilson_interval,
    worst_slice_sqnr_interval,
)
from edgepack.validation.metrics import (
    RunningAccuracy,
    RunningAgreement,
    RunningComparison,
    RunningSliceSqnr,
    feature_axis,
)
from edgepack.validation.report import OutputComparison, ValidationReport, finite_or_none, with_interval


class _Micro:
    """TFLM against LiteRT on the same samples."""

    def __init__(self) -> None:
        self.accuracy = RunningAccuracy()
        self.agreement = RunningAgreement()
        self.max_abs = 0.0


def _per_sample(arr: np.ndarray, samples: int | None) -> np.ndarray:
    """An output of ``samples`` samples, samples first: one without a leading batch axis (a
    time-major recognizer's (steps, 1, classes), run per sample and concatenated) is split back."""
    if samples is None or arr.ndim == 0 or arr.shape[0] == samples or arr.shape[0] % samples:
        return arr
    return arr.reshape(samples, arr.shape[0] // samples, *arr.shape[1:])


def _points(i: Interval) -> Interval:
    """A drop as a fraction → in percentage points."""
    return Interval(i.value * 100, i.low * 100, i.high * 100, i.n, i.confidence, i.method)


def _top1(a: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(a).reshape(n, -1, np.asarray(a).shape[-1]).argmax(axis=-1) if np.asarray(a).ndim > 1 \
        else np.asarray(a)


class _PerSample:
    """What the intervals are computed from, kept per sample (a few numbers each): top-1 right or not
    for the reference and the bundle, each sample's share of agreeing top-1 decisions, and per output
    the signal and noise sums of each slice."""

    def __init__(self) -> None:
        self.ref_right: list[np.ndarray] = []
        self.out_right: list[np.ndarray] = []
        self.agree: list[np.ndarray] = []
        self.sums: list[list[tuple[np.ndarray, np.ndarray]] | None] = []

    def update(self, refs: list[np.ndarray], outs: list[np.ndarray], labels: np.ndarray | None,
               samples: int | None, axes: list[int | None]) -> None:
        n = samples if samples is not None else len(refs[0])
        r0, o0 = _per_sample(refs[0], samples), _per_sample(outs[0], samples)
        if r0.ndim >= 2 and r0.shape[-1] > 1 and len(r0) == n:
            self.agree.append(np.mean(_top1(r0, n) == _top1(o0, n), axis=1))
        if labels is not None and r0.ndim >= 2 and len(r0) == n:
            y = np.asarray(labels)
            y = (y.argmax(axis=-1) if y.ndim == refs[0].ndim and y.ndim > 1 else y).reshape(-1)
            if y.size == n:
                self.ref_right.append(r0.reshape(n, -1).argmax(axis=-1) == y)
                self.out_right.append(o0.reshape(n, -1).argmax(axis=-1) == y)
        # slices are judged on samples-first outputs only (a time-major output's axis means another thing)
        self.sums.append([per_sample_slice_sums(r, o, ax) if len(r) == n else None
                          for r, o, ax in zip(refs, outs, axes)])

    def intervals(self, names: list[str], confidence: float) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.agree:
            d["top1_agreement"] = agreement_interval(np.concatenate(self.agree), confidence).to_dict()
        if self.ref_right:
            ref, out = np.concatenate(self.ref_right), np.concatenate(self.out_right)
            d["accuracy_bundle"] = wilson_interval(int(out.sum()), out.size, confidence).to_dict()
            d["accuracy_reference"] = wilson_interval(int(ref.sum()), ref.size, confidence).to_dict()
            d["accuracy_drop_pp"] = _points(paired_drop_interval(ref, out, confidence)).to_dict(3)
        sqnr = {}
        for i, name in enumerate(names):
            parts = [chunk[i] for chunk in self.sums if i < len(chunk)]
            if parts and all(p is not None for p in parts):
                rr, nn = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                sqnr[name] = worst_slice_sqnr_interval(rr, nn, confidence).to_dict(3)
        if sqnr:
            d["worst_slice_sqnr_db"] = sqnr
        return d


class Evaluation:
    """Running metrics of one validation pass: the bundle against labels, the reference and TFLM."""

    def __init__(self, manifest: Any, *, labelled: bool, reference: bool, tflm: bool, task: Any = None,
                 confidence: float = CONFIDENCE) -> None:
        self.manifest = manifest
        self.confidence = confidence
        self.samples = _PerSample()
        self.task = task  # --metric: validation.metrics.TaskMetric
        self.kept: tuple[list, list, list] = ([], [], [])  # outputs, references, labels, for the task metric
        self.labelled = labelled
        self.accuracy = RunningAccuracy()
        self.confusion = RunningConfusion()
        self.reference_accuracy = RunningAccuracy() if reference else None
        self.agreement = RunningAgreement() if reference else None
        self.outputs = [RunningComparison() for _ in manifest.outputs] if reference else []
        self.slices: list[RunningSliceSqnr] = []  # created on the first chunk (the axis needs the shape)
        self.per_output_agreement = [RunningAgreement() for _ in manifest.outputs] if reference else []
        budget = getattr(manifest, "budget", None) or {}
        self.budget_axes = budget.get("sqnr_axes") or {}
        self.tflm = _Micro() if tflm else None
        self.arena = None  # ArenaMeasurement, when TFLM ran

    def bundle(self, outs: list[np.ndarray], labels: np.ndarray | None) -> None:
        if labels is not None:
            self.accuracy.update(outs[0], labels)
            self.confusion.update(outs[0], labels)

    def micro(self, micro: list[np.ndarray], outs: list[np.ndarray], labels: np.ndarray | None) -> None:
        assert self.tflm is not None
        if labels is not None:
            self.tflm.accuracy.update(micro[0], labels)
        self.tflm.agreement.update(outs[0], micro[0])
        for a, b in zip(outs, micro):
            self.tflm.max_abs = max(self.tflm.max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)

    def compare(self, refs: list[np.ndarray], outs: list[np.ndarray], labels: np.ndarray | None,
                samples: int | None = None) -> None:
        for t, ref, out in zip(self.manifest.outputs, refs, outs):
            if ref.shape != out.shape:
                raise ModelLoadError(f"--reference output for {t.name!r} has shape {list(ref.shape)}, the bundle's "
                                     f"{list(out.shape)}", hint="pass the model the bundle was converted from")
        if labels is not None and self.reference_accuracy is not None:
            self.reference_accuracy.update(refs[0], labels)
        if self.agreement is not None:
            self.agreement.update(refs[0], outs[0])
        for acc, ref, out in zip(self.outputs, refs, outs):
            acc.update(ref, out)
        if not self.slices:
            self.slices = [RunningSliceSqnr(self.budget_axes[t.name] if t.name in self.budget_axes
                                            else feature_axis(ref.shape))
                           for t, ref in zip(self.manifest.outputs, refs)]
        self.samples.update(refs, outs, labels, samples, [sl.axis for sl in self.slices])
        if self.task is not None:  # samples first, as convert's budget gives them to the metric
            self.kept[0].append([_per_sample(o, samples) for o in outs])
            self.kept[1].append([_per_sample(r, samples) for r in refs])
            self.kept[2].append(labels)
        for sl, agree, ref, out in zip(self.slices, self.per_output_agreement, refs, outs):
            sl.update(ref, out)
            if ref.ndim >= 2 and ref.shape[-1] > 1:
                agree.update(ref, out)

    def fill(self, report: ValidationReport) -> None:
        if self.labelled:
            report.accuracy_bundle = self.accuracy.result()
            report.confusion = self.confusion.to_dict(self.manifest.outputs[0].name)
            if self.reference_accuracy is not None:
                report.accuracy_reference = self.reference_accuracy.result()
        if self.agreement is not None:
            report.top1_agreement = self.agreement.result()
        for i, (t, acc) in enumerate(zip(self.manifest.outputs, self.outputs)):
            worst, where, axis = None, None, None
            if i < len(self.slices):
                value, where = self.slices[i].worst
                worst, axis = finite_or_none(value), self.slices[i].axis
            report.outputs.append(OutputComparison(name=t.name, max_abs_error=acc.max_abs,
                                                   cosine_similarity=acc.cosine, sqnr_db=finite_or_none(acc.sqnr_db),
                                                   worst_slice_sqnr_db=worst, worst_slice=where, slice_axis=axis,
                                                   exact=acc.noise == 0.0))
        if self.task is not None and self.kept[0]:
            outs, refs = ([np.concatenate(parts) for parts in zip(*chunks)] for chunks in self.kept[:2])
            labels = None if any(y is None for y in self.kept[2]) else np.concatenate(self.kept[2])
            value, ref_value = self.task(outs, refs, labels), self.task(refs, refs, labels)
            report.task_metric = {"metric": self.task.spec, "bundle": value, "reference": ref_value,
                                  "drop_pp": round((ref_value - value) * 100.0, 4)}
            drop = task_drop_interval(self.task, outs, refs, labels, ref_value - value, self.confidence)
            report.intervals["task_metric_drop_pp"] = _points(drop).to_dict(3)
        report.confidence = self.confidence
        report.intervals.update(self.samples.intervals([t.name for t in self.manifest.outputs], self.confidence))
        self._budget(report)
        if self.tflm is not None:
            report.runtimes["tflm"] = self._tflm_section(report)

    def _budget(self, report: ValidationReport) -> None:
        """A bundle converted with an accuracy budget: the same metrics, measured on this data."""
        budget = getattr(self.manifest, "budget", None)
        if not budget or not self.slices:
            return
        worst = min((s.worst[0] for s in self.slices), default=float("inf"))
        agreements = [a.result() for a in self.per_output_agreement if a.result() is not None]
        measured = {"worst_slice_sqnr_db": finite_or_none(worst),
                    "agreement": min(agreements) if agreements else None, "accuracy_drop_pp": report.accuracy_drop_pp}
        task = budget["budget"].get("metric")
        if task is not None:  # the budget bounded the user's task metric: measured only when --metric is given
            measured["accuracy_drop_pp"] = None
            if report.task_metric is not None:
                measured["task_metric_drop_pp"] = report.task_metric["drop_pp"]
            else:
                report.notes.append(f"convert's budget bounded the task metric {task}; pass --metric to measure it")
        iv = report.intervals
        sqnr_iv = min((i for i in iv.get("worst_slice_sqnr_db", {}).values()), default=None,
                      key=lambda i: math.inf if i["value"] is None else i["value"])
        parts = []
        if "min_sqnr_db" in budget["budget"]:
            parts.append("worst-slice SQNR " + with_interval("inf" if measured["worst_slice_sqnr_db"] is None
                                                              else f"{measured['worst_slice_sqnr_db']:.2f}", sqnr_iv, 2)
                         + " dB")
        if "min_agreement" in budget["budget"] and measured["agreement"] is not None:
            one = len(self.manifest.outputs) == 1
            parts.append("agreement " + with_interval(f"{measured['agreement']:.3f}",
                                                      iv.get("top1_agreement") if one else None))
        if "max_drop_pp" in budget["budget"] and measured["accuracy_drop_pp"] is not None:
            parts.append("accuracy drop " + with_interval(f"{measured['accuracy_drop_pp']:.2f}",
                                                          iv.get("accuracy_drop_pp"), 2) + " pp")
        if measured.get("task_metric_drop_pp") is not None:
            parts.append("task metric drop " + with_interval(f"{measured['task_metric_drop_pp']:.2f}",
                                                             iv.get("task_metric_drop_pp"), 2) + " pp")
        report.budget = {"budget": budget["budget"], "budget_met_at_convert": budget["budget_met"],
                         "values": measured, "measured": ", ".join(parts) or "not measurable on this data"}

    def _tflm_section(self, report: ValidationReport) -> dict[str, Any]:
        assert self.tflm is not None
        step = self.manifest.outputs[0].scale
        diff = self.tflm.max_abs
        section = {"accuracy": self.tflm.accuracy.result() if self.labelled else None,
                   "max_abs_diff_vs_litert": diff,
                   "max_diff_steps_vs_litert": round(diff / step) if step else None,
                   "top1_agreement_vs_litert": self.tflm.agreement.result(),
                   **(self.arena.to_dict() if self.arena is not None else {})}
        if "vela" in self.manifest.extras:
            report.notes.append("validated the plain int8 model.tflite on LiteRT and TFLM: the host cannot run the "
                                f"Ethos-U custom op in {self.manifest.extras['vela'].get('model', 'the Vela model')}")
        return section
