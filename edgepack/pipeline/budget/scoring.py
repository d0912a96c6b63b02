"""Scoring a candidate against the source model on the evaluation set: the figures (:class:`Score`),
the in-process LiteRT runner, and the candidate record written to the manifest."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.converter.requantize import ops_of
from edgepack.formats.base import signature_name
from edgepack.pipeline.budget.evalset import EvalSet
from edgepack.request import BudgetOptions
from edgepack.tflite_model import read_tflite
from edgepack.validation.intervals import (
    Interval,
    agreement_interval,
    paired_drop_interval,
    per_sample_slice_sums,
    worst_slice_sqnr_interval,
)
from edgepack.validation.metrics import RunningSliceSqnr

STRUCTURAL = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION",
              "GATHER", "STRIDED_SLICE", "SLICE", "PACK", "UNPACK", "SPLIT", "SPLIT_V", "PAD", "PADV2"}



@dataclass
class Evidence:
    """The per-sample facts a score's intervals come from (samples first)."""

    agree_hits: dict[str, np.ndarray]  # per output and sample: the share of top-1 decisions the same as the source's
    slice_sums: dict[str, tuple[np.ndarray, np.ndarray]]  # per output: (signal, noise), (samples, slices)
    correct: tuple[np.ndarray, np.ndarray] | None = None  # top-1 right per sample: (source, candidate)
    task_drop: Callable[[float], Interval] | None = None  # --metric: the drop's bootstrap at a confidence


@dataclass
class Score:
    sqnr: dict[str, float]  # worst slice per output
    sqnr_whole: dict[str, float]
    worst_slice: dict[str, int | None]
    agreement: dict[str, float]
    accuracy: float | None
    accuracy_reference: float | None
    sample_error: np.ndarray  # per sample: noise / signal over all outputs (ranking)
    task: bool = False  # accuracy / accuracy_reference are the --metric task metric, not top-1
    evidence: Evidence | None = None
    _intervals: dict[tuple, Any] = field(default_factory=dict, repr=False)

    @property
    def drop_pp(self) -> float | None:
        if self.accuracy is None or self.accuracy_reference is None:
            return None
        return (self.accuracy_reference - self.accuracy) * 100.0

    def margin(self, budget: BudgetOptions) -> float:
        """How far inside the budget (positive) or outside (negative) the measured figures are: the
        tightest constraint, in dB, agreement percentage points or accuracy points (ranks candidates)."""
        slack = []
        if budget.min_sqnr is not None:
            slack.append(_finite(min(self.sqnr.values())) - budget.min_sqnr)
        if budget.min_agreement is not None:
            slack.append((min(self.agreement.values()) - budget.min_agreement) * 100.0)
        if budget.max_drop is not None:
            slack.append(budget.max_drop - (self.drop_pp if self.drop_pp is not None else math.inf))
        return min(slack) if slack else math.inf

    def bound_margin(self, budget: BudgetOptions) -> float:
        """The same slack judged on the intervals' bounds at ``budget.confidence``: the lower bound of
        SQNR and agreement, the upper bound of the drop."""
        slack = []
        conf = budget.confidence
        if budget.min_sqnr is not None:
            slack.append(_finite(min(i.low for i in self.sqnr_intervals(conf).values())) - budget.min_sqnr)
        if budget.min_agreement is not None:
            slack.append((min(i.low for i in self.agreement_intervals(conf).values()) - budget.min_agreement) * 100)
        if budget.max_drop is not None:
            drop = self.drop_interval(conf)
            slack.append(budget.max_drop - (drop.high * 100.0 if drop is not None else math.inf))
        return min(slack) if slack else math.inf

    def meets(self, budget: BudgetOptions) -> bool:
        """Met: the measured figures and the bounds of their intervals meet the budget."""
        return self.margin(budget) >= 0 and (self.evidence is None or self.bound_margin(budget) >= 0)

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._intervals:
            self._intervals[key] = compute()
        return self._intervals[key]

    def agreement_intervals(self, confidence: float) -> dict[str, Interval]:
        hits = self.evidence.agree_hits if self.evidence is not None else {}
        return self._cached(("agreement", confidence), lambda: {
            k: agreement_interval(h, confidence) for k, h in hits.items()})

    def sqnr_intervals(self, confidence: float) -> dict[str, Interval]:
        sums = self.evidence.slice_sums if self.evidence is not None else {}
        return self._cached(("sqnr", confidence), lambda: {
            k: worst_slice_sqnr_interval(rr, nn, confidence) for k, (rr, nn) in sums.items()})

    def drop_interval(self, confidence: float) -> Interval | None:
        """The drop (a fraction) of top-1 accuracy (Newcombe, paired) or of the task metric (bootstrap)."""
        ev = self.evidence
        if ev is None or (ev.correct is None and ev.task_drop is None):
            return None
        return self._cached(("drop", confidence), lambda: ev.task_drop(confidence) if ev.task_drop is not None
                            else paired_drop_interval(*ev.correct, confidence))

    def intervals(self, budget: BudgetOptions, task: bool = True) -> dict[str, Any]:
        """The budget's figures with their intervals, for the manifest (the task metric's bootstrap only
        when ``task`` or already computed)."""
        conf = budget.confidence
        d: dict[str, Any] = {"confidence": conf}
        if self.agreement:
            d["agreement"] = {k: i.to_dict() for k, i in self.agreement_intervals(conf).items()}
        if budget.min_sqnr is not None:
            d["sqnr_db"] = {k: i.to_dict(3) for k, i in self.sqnr_intervals(conf).items()}
        if budget.max_drop is not None and (task or not self.task or ("drop", conf) in self._intervals):
            drop = self.drop_interval(conf)
            if drop is not None:
                pp = Interval(drop.value * 100, drop.low * 100, drop.high * 100, drop.n, conf, drop.method)
                d["task_metric_drop_pp" if self.task else "accuracy_drop_pp"] = pp.to_dict(3)
        return d

    def to_dict(self, budget: BudgetOptions | None = None, task: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"sqnr_db": {k: _round(v) for k, v in self.sqnr.items()},
                             "sqnr_db_whole": {k: _round(v) for k, v in self.sqnr_whole.items()},
                             "worst_slice": dict(self.worst_slice),
                             "agreement": {k: round(v, 5) for k, v in self.agreement.items()}}
        if self.accuracy is not None:
            key = "task_metric" if self.task else "accuracy"
            d.update({key: round(self.accuracy, 5), f"{key}_reference": round(self.accuracy_reference, 5),
                      f"{key}_drop_pp": round(self.drop_pp, 3)})
        if budget is not None and self.evidence is not None:
            d["intervals"] = self.intervals(budget, task)
        return d

    def brief(self, budget: BudgetOptions | None = None) -> str:
        """The figures in one line; with ``budget``, the budget's figures with their intervals."""
        conf = budget.confidence if budget is not None and self.evidence is not None else None
        worst = min(self.sqnr.values())
        sq = _fmt_db(worst)
        if conf is not None and budget.min_sqnr is not None:
            sq = min(self.sqnr_intervals(conf).values(), key=lambda i: i.value).format(2) + " (dB)"
        parts = [f"worst-slice SQNR {sq}"]
        if self.agreement:
            agree = f"{min(self.agreement.values()):.4f}"
            if conf is not None and budget.min_agreement is not None:
                agree = min(self.agreement_intervals(conf).values(), key=lambda i: i.value).format()
            parts.append(f"agreement {agree}")
        if self.drop_pp is not None:
            drop = f"{self.drop_pp:.2f} pp"
            if conf is not None and budget.max_drop is not None and self.drop_interval(conf) is not None:
                drop = self.drop_interval(conf).format(2, scale=100.0) + " (pp)"
            if self.task:
                parts.append(f"task metric {self.accuracy:.4f} (source {self.accuracy_reference:.4f}, drop {drop})")
            else:
                parts.append(f"accuracy drop {drop}")
        return ", ".join(parts)


def _finite(v: float) -> float:
    return 300.0 if v == math.inf else (-300.0 if v == -math.inf else v)


def _round(v: float) -> float | None:
    return None if not math.isfinite(v) else round(v, 3)


def _fmt_db(v: float) -> str:
    return "inf dB" if v == math.inf else f"{v:.2f} dB"


class Runner:
    """A candidate model on LiteRT, in-process: float samples in, dequantized source-layout outputs out."""

    def __init__(self, model: bytes, ev: EvalSet) -> None:
        from ai_edge_litert.interpreter import Interpreter

        info = read_tflite(model, verify=False)  # a candidate quantized in this process
        with capture_native_output():
            self.interp = Interpreter(model_content=bytes(model), num_threads=2)
        self.in_idx = {name: info.signature_inputs.get(signature_name(name), info.inputs[i])
                       for i, name in enumerate(ev.inputs)}
        self.out_idx = [info.signature_outputs.get(signature_name(name), info.outputs[i])
                        for i, name in enumerate(ev.output_names)]
        self.info = info
        self.dynamic = all(info.tensor(i).shape_signature and info.tensor(i).shape_signature[0] == -1
                           for i in self.in_idx.values()) and not any(ev.stacked) and not ev.whole
        # one sample per invoke; an output whose first axis is not a batch of 1 (the state it returns)
        # gets the samples axis in front, as the source model's outputs did
        self.add_axis = [bool(i < len(ev.stacked) and ev.stacked[i]) or
                         bool(ev.whole and (not info.tensor(idx).shape or info.tensor(idx).shape[0] != 1))
                         for i, idx in enumerate(self.out_idx)]
        self.ev = ev
        self.batch = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        from edgepack.runtimes.litert import dequantize, quantize

        n = len(next(iter(inputs.values())))
        step = min(n, 16) if self.dynamic else 1
        parts: list[list[np.ndarray]] = [[] for _ in self.out_idx]
        for start in range(0, n, step):
            b = min(step, n - start)
            if b != self.batch:
                if self.dynamic:
                    for idx in self.in_idx.values():
                        self.interp.resize_tensor_input(idx, [b, *self.info.tensor(idx).shape[1:]])
                with capture_native_output():
                    self.interp.allocate_tensors()
                self.batch = b
            for name, idx in self.in_idx.items():
                t = self.info.tensor(idx)
                data = inputs[name][start].reshape(t.shape) if name in self.ev.whole else inputs[name][start:start + b]
                self.interp.set_tensor(idx, quantize(data, t))
            self.interp.invoke()
            for i, (idx, perm) in enumerate(zip(self.out_idx, self.ev.perms)):
                out = dequantize(self.interp.get_tensor(idx), self.info.tensor(idx))
                out = out if perm is None else np.transpose(out, np.argsort(perm))
                parts[i].append(out[None] if self.add_axis[i] else out)
        return [np.concatenate(p, axis=0) for p in parts]


def score(model: bytes, ev: EvalSet) -> Score:
    """A candidate's figures on the evaluation set (run in-process on LiteRT)."""
    return score_outputs(Runner(model, ev)(ev.inputs), ev)


def score_outputs(outs: list[np.ndarray], ev: EvalSet) -> Score:
    """The figures of a candidate's outputs (source layout, samples first) against the source model's."""
    sqnr, whole, worst, agree = {}, {}, {}, {}
    evidence = Evidence({}, {})
    err = np.zeros(len(ev))
    for i, (name, ref, out, axis) in enumerate(zip(ev.output_names, ev.refs, outs, ev.axes)):
        out = out.reshape(ref.shape) if out.size == ref.size else out
        # one pass over the values: the per-sample, per-slice sums of squares give every figure below
        signal, noise = evidence.slice_sums[name] = per_sample_slice_sums(ref, out, axis)
        s, w = RunningSliceSqnr(axis), RunningSliceSqnr(None)
        if axis == 0:  # slices across the samples: not a sum of per-sample ones
            s.update(ref, out)
        else:
            s.add_sums(signal.sum(axis=0), noise.sum(axis=0))
        w.add_sums(signal.sum(keepdims=True).reshape(1), noise.sum(keepdims=True).reshape(1))
        sqnr[name], worst[name] = s.worst
        whole[name] = w.worst[0]
        if ev.has_decision(i):
            same = (ref.argmax(axis=-1) == out.argmax(axis=-1)).reshape(len(ev), -1)
            agree[name] = float(np.mean(same))
            evidence.agree_hits[name] = same.mean(axis=1)
        err += noise.sum(axis=1) / max(float(signal.sum()) / len(ev), 1e-30)
    if ev.task is not None:
        value = ev.task(outs, ev.refs, ev.labels)
        evidence.task_drop = lambda conf: ev.task_drop_interval(outs, ev.task_reference() - value, conf)
        return Score(sqnr, whole, worst, agree, value, ev.task_reference(), err, True, evidence)
    acc = acc_ref = None
    if ev.labels is not None:
        y = np.asarray(ev.labels)
        if y.ndim == ev.refs[0].ndim and y.ndim > 1:
            y = y.argmax(axis=-1)
        y = y.reshape(-1)
        right = outs[0].reshape(len(ev), -1).argmax(axis=-1) == y
        ref_right = ev.refs[0].reshape(len(ev), -1).argmax(axis=-1) == y
        acc, acc_ref = float(np.mean(right)), float(np.mean(ref_right))
        evidence.correct = (ref_right, right)
    return Score(sqnr, whole, worst, agree, acc, acc_ref, err, evidence=evidence)


# -- candidates ----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    step: str
    name: str
    model: bytes
    score: Score
    denylist: tuple[str, ...] = ()
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    range_methods: dict[str, str] = field(default_factory=dict)
    float_output: bool = False
    int16: bool = False
    spliced: bool = False  # built by splicing (edgepack.converter.splice), not by the quantizer
    met: bool = False
    seconds: float = 0.0
    why: dict[str, str] = field(default_factory=dict)  # node -> why it is not int8

    def ops_out_of_int8(self, ops: list[tuple[str, str, str]] | None = None) -> dict[str, list[str]]:
        """``{"float": [...], "int16": [...]}`` node names (op outputs) that are not int8."""
        out: dict[str, list[str]] = {"float": [], "int16": []}
        for kind, node, dtype in ops if ops is not None else _op_outputs(self.model):
            if kind in ("QUANTIZE", "DEQUANTIZE"):
                continue
            if dtype in ("float32", "float16"):
                out["float"].append(node)
            elif dtype == "int16":
                out["int16"].append(node)
        return out

    def record(self, budget: BudgetOptions, latency: bool = True) -> dict[str, Any]:
        from edgepack.optimize.measure import litert_p50_ms

        ops = _op_outputs(self.model)
        not_int8 = self.ops_out_of_int8(ops)
        total = len([k for k, _, _ in ops if k not in ("QUANTIZE", "DEQUANTIZE")])
        rec = {"step": self.step, "name": self.name, "met": self.met, "margin": _round(self.score.margin(budget)),
               "metric": self.score.to_dict(budget, task=False), "float_ops": len(not_int8["float"]),
               "int16_ops": len(not_int8["int16"]), "ops": total, "bytes": len(self.model),
               "seconds": round(self.seconds, 3), "built": "splice" if self.spliced else "quantizer"}
        if latency:
            rec["litert_p50_ms"] = litert_p50_ms(self.model, runs=20, warmup=3)
        return rec


def _op_outputs(model: bytes) -> list[tuple[str, str, str]]:
    """``(op type, node name, output dtype)`` per op of a candidate."""
    info = read_tflite(model, verify=False)  # a candidate quantized in this process
    return [(kind, node, info.tensor(outs[0]).dtype) for kind, node, _, outs in ops_of(info) if outs]



def _to_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)


def _float32():
    import tensorflow as tf

    return tf.float32
