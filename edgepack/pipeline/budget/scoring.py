"""Scoring a candidate against the source model on the evaluation set: the figures (:class:`Score`),
the in-process LiteRT runner, and the candidate record written to the manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.converter.requantize import model_ops
from edgepack.formats.base import signature_name
from edgepack.pipeline.budget.evalset import EvalSet
from edgepack.request import BudgetOptions
from edgepack.tflite_model import read_tflite
from edgepack.validation.metrics import RunningSliceSqnr

STRUCTURAL = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION",
              "GATHER", "STRIDED_SLICE", "SLICE", "PACK", "UNPACK", "SPLIT", "SPLIT_V", "PAD", "PADV2"}



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

    @property
    def drop_pp(self) -> float | None:
        if self.accuracy is None or self.accuracy_reference is None:
            return None
        return (self.accuracy_reference - self.accuracy) * 100.0

    def margin(self, budget: BudgetOptions) -> float:
        """How far inside the budget (positive) or outside (negative): the tightest constraint, in
        dB, agreement percentage points or accuracy points."""
        slack = []
        if budget.min_sqnr is not None:
            slack.append(_finite(min(self.sqnr.values())) - budget.min_sqnr)
        if budget.min_agreement is not None:
            slack.append((min(self.agreement.values()) - budget.min_agreement) * 100.0)
        if budget.max_drop is not None:
            slack.append(budget.max_drop - (self.drop_pp if self.drop_pp is not None else math.inf))
        return min(slack) if slack else math.inf

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sqnr_db": {k: _round(v) for k, v in self.sqnr.items()},
                             "sqnr_db_whole": {k: _round(v) for k, v in self.sqnr_whole.items()},
                             "worst_slice": dict(self.worst_slice),
                             "agreement": {k: round(v, 5) for k, v in self.agreement.items()}}
        if self.accuracy is not None:
            key = "task_metric" if self.task else "accuracy"
            d.update({key: round(self.accuracy, 5), f"{key}_reference": round(self.accuracy_reference, 5),
                      f"{key}_drop_pp": round(self.drop_pp, 3)})
        return d

    def brief(self) -> str:
        parts = [f"worst-slice SQNR {_fmt_db(min(self.sqnr.values()))}"]
        if self.agreement:
            parts.append(f"agreement {min(self.agreement.values()):.4f}")
        if self.drop_pp is not None:
            if self.task:
                parts.append(f"task metric {self.accuracy:.4f} (source {self.accuracy_reference:.4f}, "
                             f"drop {self.drop_pp:.2f} pp)")
            else:
                parts.append(f"accuracy drop {self.drop_pp:.2f} pp")
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

        info = read_tflite(model)
        with capture_native_output():
            self.interp = Interpreter(model_content=bytes(model), num_threads=2)
        self.in_idx = {name: info.signature_inputs.get(signature_name(name), info.inputs[i])
                       for i, name in enumerate(ev.inputs)}
        self.out_idx = [info.signature_outputs.get(signature_name(name), info.outputs[i])
                        for i, name in enumerate(ev.output_names)]
        self.info = info
        self.dynamic = all(info.tensor(i).shape_signature and info.tensor(i).shape_signature[0] == -1
                           for i in self.in_idx.values()) and not any(ev.stacked)
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
                self.interp.set_tensor(idx, quantize(inputs[name][start:start + b], self.info.tensor(idx)))
            self.interp.invoke()
            for i, (idx, perm) in enumerate(zip(self.out_idx, self.ev.perms)):
                out = dequantize(self.interp.get_tensor(idx), self.info.tensor(idx))
                out = out if perm is None else np.transpose(out, np.argsort(perm))
                parts[i].append(out[None] if i < len(self.ev.stacked) and self.ev.stacked[i] else out)
        return [np.concatenate(p, axis=0) for p in parts]


def score(model: bytes, ev: EvalSet) -> Score:
    outs = Runner(model, ev)(ev.inputs)
    sqnr, whole, worst, agree = {}, {}, {}, {}
    err = np.zeros(len(ev))
    for name, ref, out, axis in zip(ev.output_names, ev.refs, outs, ev.axes):
        out = out.reshape(ref.shape) if out.size == ref.size else out
        s = RunningSliceSqnr(axis)
        s.update(ref, out)
        sqnr[name], worst[name] = s.worst
        if axis is None:  # one slice: the whole tensor
            whole[name] = sqnr[name]
        else:
            w = RunningSliceSqnr(None)
            w.update(ref, out)
            whole[name] = w.worst[0]
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            agree[name] = float(np.mean(ref.argmax(axis=-1) == out.argmax(axis=-1)))
        r = ref.reshape(len(ev), -1).astype(np.float64)
        d = r - out.reshape(len(ev), -1)
        err += np.sum(d * d, axis=1) / max(float(np.sum(r * r)) / len(ev), 1e-30)
    acc = acc_ref = None
    if ev.task is not None:
        return Score(sqnr, whole, worst, agree, ev.task(outs, ev.refs, ev.labels), ev.task_reference(), err, True)
    if ev.labels is not None:
        y = np.asarray(ev.labels)
        if y.ndim == ev.refs[0].ndim and y.ndim > 1:
            y = y.argmax(axis=-1)
        y = y.reshape(-1)
        acc = float(np.mean(outs[0].reshape(len(ev), -1).argmax(axis=-1) == y))
        acc_ref = float(np.mean(ev.refs[0].reshape(len(ev), -1).argmax(axis=-1) == y))
    return Score(sqnr, whole, worst, agree, acc, acc_ref, err)



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
               "metric": self.score.to_dict(), "float_ops": len(not_int8["float"]), "int16_ops": len(not_int8["int16"]),
               "ops": total, "bytes": len(self.model), "seconds": round(self.seconds, 3)}
        if latency:
            rec["litert_p50_ms"] = litert_p50_ms(self.model, runs=20, warmup=3)
        return rec


def _op_outputs(model: bytes) -> list[tuple[str, str, str]]:
    """``(op type, node name, output dtype)`` per op of a candidate."""
    info = read_tflite(model)
    return [(kind, info.tensor(outs[0]).name, info.tensor(outs[0]).dtype) for kind, _, _, outs in model_ops(model)
            if outs]



def _to_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)


def _float32():
    import tensorflow as tf

    return tf.float32
