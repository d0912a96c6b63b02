"""The accuracy budget: search, cheapest first, for a quantized model that meets it.

``--max-drop PP`` (top-1 accuracy on labelled ``--eval-data``), ``--min-sqnr DB`` and
``--min-agreement F`` compare each candidate with the source model on the evaluation data. SQNR is
judged per output and per slice along the output's feature axis
(:func:`edgepack.validation.metrics.feature_axis`, ``--sqnr-axis NAME:AXIS``); the worst slice
counts. Candidates, in cost order — the search stops at the first that meets the budget:

1. ``int8``: the plain full-int8 conversion;
2. ``ranges``: better activation ranges per tensor (0.01/99.99 percentiles, or MSE-optimal
   clipping, kept where they shrink that tensor's int8 grid error), the method chosen by the effect
   on the outputs;
3. ``fallback``: ops kept in float, chosen by sensitivity — ranked by their local error (RMSE /
   scale) and by the whole-model gain of keeping each one in float, measured on the evaluation
   samples with the largest error — added greedily by gain per cost (a stretch of ops is bisected
   down to the part that carries its gain), each step checked on the whole evaluation set and
   undone when it did not help, then fallbacks no longer needed dropped again.
   An int8 output whose slices need different scales can be made float (with its producer op);
   that changes what the device app reads and is recorded and printed. When no small set of
   float ops gets there (the error is spread over the graph), the search starts from the other end:
   every op float, then contiguous stretches given back to int8 (halves, quarters ... 1/32) while
   the budget still holds;
4. ``int16x8``: int16 activations, with float fallback where the target allows float;
5. otherwise a :class:`BudgetNotMet` with the best candidate's figures and the sensitivity table.

Integer-only targets (TFLite Micro, Ethos-U) allow no float op: steps 1, 2 and 4 only.

The converter calibrates once (:mod:`edgepack.converter.requantize`); every candidate is a
re-quantization of that calibrated model (cached by its settings, so a probe that is confirmed is
not quantized twice), evaluated in-process on LiteRT.

``--metric FILE.py:FUNCTION`` replaces top-1 accuracy in ``--max-drop`` with the user's task
metric (:class:`edgepack.validation.metrics.TaskMetric`): detection F1, string accuracy... judged
like accuracy, in points below the source model's score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.converter.requantize import Calibrated, model_ops
from edgepack.errors import BudgetNotMet, EdgepackError
from edgepack.formats.base import signature_name
from edgepack.request import BudgetOptions
from edgepack.tflite_model import read_tflite
from edgepack.validation.metrics import RunningSliceSqnr, feature_axis

log = logging.getLogger(__name__)

RANKING_SAMPLES = 16  # the evaluation samples with the largest error: where sensitivity is measured
MAX_ROUNDS = 6  # greedy fallback rounds
SEGMENTS = 8  # contiguous groups of ops probed as one
DROP_TRIALS = 16  # candidates spent dropping fallbacks no longer needed
TOP_DOWN_TRIALS = 40  # candidates spent giving stretches of an all-float candidate back to int8
TOP_DOWN_LEVELS = 5  # stretch sizes tried: 1/2, 1/4 ... 1/32 of the graph
CACHED_MODELS = 32  # quantized candidates kept for reuse (a round probes up to ~22 options)
NARROW_KEEP = 0.75  # a half of a group replaces the group when it keeps this share of the gain
PROBE_OPS = 12  # ops whose whole-model effect is measured (the largest local errors, plus output producers)
STRUCTURAL = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION",
              "GATHER", "STRIDED_SLICE", "SLICE", "PACK", "UNPACK", "SPLIT", "SPLIT_V", "PAD", "PADV2"}


# -- evaluation ----------------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """The evaluation data in the TFLite layout, the source model's outputs on it, labels."""

    inputs: dict[str, np.ndarray]  # TFLite-layout arrays, batch first
    # source layout, one per output, samples first: an output without a leading batch axis (a
    # time-major recognizer's (steps, 1, classes)) gets one stacked in front, per sample
    refs: list[np.ndarray]
    output_names: list[str]
    perms: list[Sequence[int] | None]  # per output: tflite = source.transpose(perm)
    axes: list[int | None]
    labels: np.ndarray | None = None
    task: Callable[[list, list, Any], float] | None = None  # --metric: the user's task metric
    stacked: tuple[bool, ...] = ()  # per output: the samples axis was added (no leading batch axis)
    _task_reference: float | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, positions: np.ndarray) -> EvalSet:
        return EvalSet({k: v[positions] for k, v in self.inputs.items()}, [r[positions] for r in self.refs],
                       self.output_names, self.perms, self.axes,
                       None if self.labels is None else self.labels[positions], self.task, self.stacked)

    def task_reference(self) -> float:
        """The task metric of the source model's own outputs (the score a candidate may drop from)."""
        if self._task_reference is None:
            self._task_reference = self.task(self.refs, self.refs, self.labels)
        return self._task_reference


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


@dataclass
class SearchResult:
    chosen: Candidate
    met: bool
    trace: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    notes: list[str]
    seconds: float


class Search:
    def __init__(self, calibrated: Calibrated, baseline: bytes, ev: EvalSet, budget: BudgetOptions, *,
                 allow_float: bool, allow_int16: bool, target_ops: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None, latency: bool = True) -> None:
        self.cal, self.baseline, self.ev, self.budget = calibrated, baseline, ev, budget
        self.allow_float, self.allow_int16, self.target_ops = allow_float, allow_int16, target_ops
        self.progress = progress or (lambda s: None)
        self.latency = latency
        self.tried: list[Candidate] = []
        self.notes: list[str] = []
        self.local: dict[str, float] = {}
        self.gains: dict[str, float] = {}
        self._ranking: EvalSet | None = None
        self._models: dict[tuple, bytes] = {}  # quantized candidates by their settings: a probe confirmed is not redone

    # -- helpers -------------------------------------------------------------------------------------
    def _make(self, step: str, name: str, *, model: bytes | None = None, ev: EvalSet | None = None,
              **kw: Any) -> Candidate:
        start = time.perf_counter()
        allow_float = kw.pop("allow_float", False)
        if model is None:
            ranges = kw.get("ranges") or {}
            key = (tuple(sorted(set(kw.get("denylist", ())))), tuple(sorted(ranges.items())),
                   kw.get("float_output", False), kw.get("int16", False), allow_float)
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = self.cal.quantize(
                    denylist=kw.get("denylist", ()), ranges=ranges or None, float_output=kw.get("float_output", False),
                    int16=kw.get("int16", False), allow_float=allow_float)
                if len(self._models) > CACHED_MODELS:  # the oldest goes: a round's probes are what gets confirmed
                    self._models.pop(next(iter(self._models)))
        sc = score(model, ev or self.ev)
        cand = Candidate(step, name, model, sc, **kw)
        cand.met = ev is None and sc.margin(self.budget) >= 0
        cand.seconds = time.perf_counter() - start
        if ev is None:
            self.tried.append(cand)
            log.info("budget: %s (%s): %s%s", step, name, sc.brief(), " -- meets the budget" if cand.met else "")
            self.progress(f"{step}: {sc.brief()}")
        return cand

    def best(self) -> Candidate:
        return max(self.tried, key=lambda c: c.score.margin(self.budget))

    # -- the search ----------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        start = time.perf_counter()
        chosen = self._search()
        met = chosen is not None
        if chosen is None:
            chosen = self.best()
        sens = self.sensitivity(chosen)
        trace = [c.record(self.budget, self.latency) for c in self.tried]
        return SearchResult(chosen, met, trace, sens, self.notes, time.perf_counter() - start)

    def _search(self) -> Candidate | None:
        base = self._make("int8", "full int8", model=self.baseline)
        if base.met:
            return base
        if not self.allow_float:
            self.notes.append("integer-only target: no float fallback; trying activation ranges and int16x8 only")
        # 2. ranges
        ranged = self._ranges(base)
        if ranged.met:
            return ranged
        start = ranged if ranged.score.margin(self.budget) > base.score.margin(self.budget) else base
        # 3. per-layer sensitivity, float fallback; then from the other end: everything float, and
        # stretches of the graph given back to int8 while the budget holds
        if self.allow_float:
            kept = self._fallback(start)
            if kept is not None and kept.met:
                return kept
            down = self._top_down(start)
            if down is not None and down.met:
                return down
        # 4. int16x8
        if self.allow_int16:
            try:
                c16 = self._make("int16x8", "int16 activations" + (", float where int16 has no kernel"
                                                                   if self.allow_float else ""),
                                 int16=True, allow_float=self.allow_float)
            except EdgepackError as err:
                self.notes.append(f"int16x8 failed: {err.message}")
            else:
                c16.why = {"*": "int16x8: no int8 candidate met the budget, so every activation is int16"}
                bad = self._unsupported(c16.model)
                if bad:
                    c16.met = False
                    self.notes.append(f"int16x8 uses ops the target does not register: {', '.join(bad)}")
                if c16.met:
                    return c16
        else:
            self.notes.append("the target does not allow int16x8")
        return None

    def _unsupported(self, model: bytes) -> list[str]:
        if self.target_ops is None:
            return []
        return sorted(set(read_tflite(model).ops) - set(self.target_ops))

    def _ranges(self, base: Candidate) -> Candidate:
        from edgepack.optimize.quantdebug import range_choices, run_all_tensors

        tensors = self.cal.tensors()
        # the model's inputs keep their recorded range: the app's data is what it is, clipping it only loses
        inputs = {self.cal.tensors()[0].index} | set(read_tflite(self.cal.model).inputs)
        recorded = {t.name: (t.min, t.max) for t in tensors if t.index not in inputs}
        samples = []
        if self.cal.samples is not None:
            for s in self.cal.samples():
                samples.append(s)
                if len(samples) >= 32:
                    break
        values = run_all_tensors(self.cal.model, samples, recorded)
        best = base
        for method in ("percentile", "mse"):
            choices = range_choices(values, recorded, method)
            if not choices:
                continue
            cand = self._make("ranges", f"{method} clipping on {len(choices)} tensor(s)",
                              ranges={c.tensor: c.range for c in choices},
                              range_methods={c.tensor: c.method for c in choices})
            if cand.met:
                return cand
            if cand.score.margin(self.budget) > best.score.margin(self.budget):
                best = cand
        return best

    def _ranking_set(self, base: Candidate) -> EvalSet:
        if self._ranking is None:
            order = np.argsort(-base.score.sample_error)[:min(RANKING_SAMPLES, len(self.ev))]
            self._ranking = self.ev.subset(np.sort(order))
        return self._ranking

    def _local(self, cand: Candidate, ev: EvalSet) -> dict[str, float]:
        from edgepack.optimize.quantdebug import local_errors, run_all_tensors

        names = [node for _, node, _, _ in self.cal.ops()]
        order = list(ev.inputs)
        samples = [[ev.inputs[k][i:i + 1] for k in order] for i in range(len(ev))]
        fl = run_all_tensors(self.cal.model, [[_to_float(a) for a in s] for s in samples], names)
        qv = run_all_tensors(cand.model, [[_to_float(a) for a in s] for s in samples], names)
        info = read_tflite(cand.model)
        scales = {t.name: t.scale for t in info.tensors if t.scale}
        return local_errors(fl, qv, scales)

    def _fallback(self, start: Candidate) -> Candidate | None:
        """Greedy rounds: probe every remaining option on top of the current fallbacks (on the
        ranking samples), take the best gain per cost, confirm it on the whole evaluation set (undone
        when it does not help), until the budget is met; then drop fallbacks no longer needed."""
        ops = self.cal.ops()
        rank_ev = self._ranking_set(start)
        self.progress("sensitivity")
        self.local = self._local(start, rank_ev)
        producers = self._output_producers()
        weights = self._weight_share(ops)
        compute = {node: kind for kind, node, _, _ in ops if kind not in STRUCTURAL}
        by_local = sorted((n for n in compute if n in self.local), key=lambda n: -self.local[n])
        probes = list(dict.fromkeys([*by_local[:PROBE_OPS], *[p for p in producers if p in compute]]))
        options: list[tuple[str, tuple[str, ...], bool, float]] = []  # (label, nodes, float output, cost)
        for node in probes:
            options.append((node, (node,), False, 1.0 + 10.0 * weights.get(node, 0.0)))
        # small groups: contiguous stretches of the graph, for error that builds up over many ops
        order = [node for kind, node, _, _ in ops]
        size = max(2, math.ceil(len(order) / SEGMENTS))
        for a in range(0, len(order), size):
            group = tuple(n for n in order[a:a + size] if n in compute)
            if len(group) > 1:
                cost = 1.0 + 10.0 * len(group) / len(order) + 10.0 * sum(weights.get(n, 0.0) for n in group)
                options.append((f"ops {a}..{min(a + size, len(order)) - 1}", group, False, cost))
        if self.cal.output_type != _float32() and self._output_needs_float(start):
            options.append(("float output", tuple(producers), True, 2.0))
        current, deny, fout = start, [], False
        why: dict[str, str] = {}
        for _round in range(MAX_ROUNDS):
            base_rank = score(current.model, rank_ev).margin(self.budget)
            ranked = []
            for opt in options:
                label, nodes, f_out, cost = opt
                if set(nodes) <= set(deny) and (fout or not f_out):
                    continue
                try:
                    c = self._make("fallback", f"probe {label}", ev=rank_ev, ranges=start.ranges,
                                   denylist=tuple(dict.fromkeys([*deny, *nodes])), float_output=fout or f_out)
                except EdgepackError as err:
                    log.info("budget: probe %s failed: %s", label, err.message)
                    continue
                gain = c.score.margin(self.budget) - base_rank
                log.info("budget: probe %s: gain %.2f on the ranking samples", label[-60:], gain)
                for n in nodes:
                    self.gains[n] = round(max(self.gains.get(n, -math.inf), gain), 4) if _round == 0 else \
                        self.gains.get(n, round(gain, 4))
                ranked.append((gain / cost, gain, opt))
            ranked.sort(key=lambda g: -g[0])
            accepted = False
            for _per_cost, gain, (label, nodes, f_out, _) in ranked[:3]:
                if gain <= 0.05:
                    break
                if len(nodes) > 1 and not f_out:  # a stretch of ops: the half that carries the gain, recursively
                    nodes, gain, label = self._narrow(nodes, gain, label, deny, fout, start, rank_ev, base_rank)
                trial = list(dict.fromkeys([*deny, *nodes]))
                c = self._make("fallback", "float output (and the ops computing its parts)" if f_out
                               else f"+ float {label}", denylist=tuple(trial), ranges=start.ranges,
                               range_methods=start.range_methods, float_output=fout or f_out)
                if c.score.margin(self.budget) > current.score.margin(self.budget):
                    deny, fout, current, accepted = trial, fout or f_out, c, True
                    for n in nodes:
                        why[n] = ("an output's slices need different scales: the output is float" if f_out else
                                  f"local error {self.local.get(n, 0):.1f} int8 steps; keeping "
                                  f"{'it' if len(nodes) == 1 else label} float gained {gain:.2f} (budget units) "
                                  "on the worst samples")
                    break
            if not accepted or current.met:
                break
        if not current.met:
            current.why = why
            return current if current is not start else None
        # drop fallbacks no longer needed: quarters of the list first, then single ops, at most DROP_TRIALS
        direct = set(self._output_producers(direct=True))
        removable = [n for n in deny if not (fout and n in direct)]
        chunks = [removable[i:i + max(1, len(removable) // 4)] for i in range(0, len(removable),
                                                                                max(1, len(removable) // 4))]
        chunks = (chunks if len(removable) > 4 else []) + [[n] for n in reversed(removable)]
        trials = 0
        for chunk in chunks:
            if trials >= DROP_TRIALS:
                break
            if not set(chunk) <= set(deny):
                continue
            trial = tuple(n for n in deny if n not in chunk)
            trials += 1
            c = self._make("fallback", f"- float {chunk[0] if len(chunk) == 1 else f'{len(chunk)} ops'}",
                           denylist=trial, ranges=start.ranges, range_methods=start.range_methods, float_output=fout)
            if c.met:
                deny, current = list(trial), c
                for n in chunk:
                    why.pop(n, None)
        current.why = {n: w for n, w in why.items() if n in deny}
        return current

    def _top_down(self, start: Candidate) -> Candidate | None:
        """When adding float ops greedily did not reach the budget, the error is spread over the
        graph: start from every op float (inputs stay int8; the outputs float when their slices need
        different scales) and give contiguous stretches back to int8, halves first, then quarters...,
        keeping each that still meets the budget. None when even all-float misses it."""
        ops = [node for kind, node, _, _ in self.cal.ops() if kind not in ("QUANTIZE", "DEQUANTIZE")]
        int8_out = self.cal.output_type != _float32()
        current = None
        # int8 outputs first (what the app reads stays the same), float outputs when int8 ones cannot meet it
        for fout in dict.fromkeys([int8_out and self._output_needs_float(start), int8_out]):
            kw = dict(ranges=start.ranges, range_methods=start.range_methods, float_output=fout)
            try:
                current = self._make("fallback", "every op float" + (", float outputs" if fout else ""),
                                     denylist=tuple(ops), **kw)
            except EdgepackError as err:
                self.notes.append(f"all-float candidate failed: {err.message}")
                return None
            if current.met:
                break
        if not current.met:
            self.notes.append(f"even every op in float misses the budget ({current.score.brief()})")
            return current
        deny, trials = list(ops), 0
        for level in range(1, TOP_DOWN_LEVELS + 1):
            size = max(1, math.ceil(len(ops) / 2 ** level))
            for a in range(0, len(ops), size):
                chunk = [n for n in ops[a:a + size] if n in deny]
                if not chunk or trials >= TOP_DOWN_TRIALS:
                    continue
                trial = [n for n in deny if n not in chunk]
                trials += 1
                try:
                    c = self._make("fallback", f"int8 again: ops {a}..{min(a + size, len(ops)) - 1} "
                                               f"({len(trial)} float)", denylist=tuple(trial), **kw)
                except EdgepackError:
                    continue
                if c.met:
                    deny, current = trial, c
        reason = ("the error is spread over the graph (no small set of float ops reached the budget): "
                  "this stretch stayed float because giving it back to int8 broke the budget")
        current.why = {n: reason for n in deny}
        return current

    def _narrow(self, nodes: tuple[str, ...], gain: float, label: str, deny: list[str], fout: bool,
                start: Candidate, rank_ev: EvalSet, base_rank: float) -> tuple[tuple[str, ...], float, str]:
        """Bisect a group of ops kept float: keep the half that alone keeps most (NARROW_KEEP) of the
        group's gain on the ranking samples, until neither half does."""
        while len(nodes) > 1:
            best = None
            for half in (nodes[:len(nodes) // 2], nodes[len(nodes) // 2:]):
                try:
                    c = self._make("fallback", f"probe {len(half)} of {label}", ev=rank_ev, ranges=start.ranges,
                                   denylist=tuple(dict.fromkeys([*deny, *half])), float_output=fout)
                except EdgepackError:
                    continue
                g = c.score.margin(self.budget) - base_rank
                if best is None or g > best[1]:
                    best = (half, g)
            if best is None or best[1] < NARROW_KEEP * gain:
                break
            nodes, gain = best
            label = nodes[0] if len(nodes) == 1 else f"{len(nodes)} ops from {nodes[0][-40:]}"
            log.info("budget: narrowed to %s: gain %.2f on the ranking samples", label, gain)
        return nodes, gain, label

    def _output_tensors(self) -> set[int]:
        info = read_tflite(self.cal.model)
        return set(info.outputs)

    def _output_producers(self, direct: bool = False) -> list[str]:
        """The ops that produce the outputs, followed back through same-scale ops (concatenation,
        reshape...): the quantizer gives a concatenation's inputs its output's scale, so a float
        output needs the ops that compute its parts in float too."""
        ops = self.cal.ops()
        by_output = {o: (kind, node, ins) for kind, node, ins, outs in ops for o in outs}
        found: list[str] = []
        todo = list(self._output_tensors())
        seen: set[int] = set()
        while todo:
            t = todo.pop()
            if t in seen or t not in by_output:
                continue
            seen.add(t)
            kind, node, ins = by_output[t]
            found.append(node)
            if kind in STRUCTURAL and not direct:
                todo.extend(ins)
        return list(dict.fromkeys(found))

    def _output_needs_float(self, cand: Candidate) -> bool:
        """An output whose worst slice is far below its whole-tensor figure: its parts need different scales."""
        return any(cand.score.sqnr[n] + 6.0 < cand.score.sqnr_whole[n] for n in cand.score.sqnr)

    def _weight_share(self, ops) -> dict[str, float]:
        info = read_tflite(self.cal.model)
        sizes = {}
        for _, node, ins, _ in ops:
            sizes[node] = sum(int(np.prod(info.tensor(i).shape or (1,))) for i in ins if info.tensor(i).constant)
        total = max(sum(sizes.values()), 1)
        return {k: v / total for k, v in sizes.items()}

    # -- the picture -----------------------------------------------------------------------------------
    def sensitivity(self, chosen: Candidate) -> list[dict[str, Any]]:
        if not self.local:
            try:
                self.local = self._local(chosen, self._ranking_set(self.tried[0]))
            except Exception as err:  # the table is a diagnostic; a failure to draw it must not fail convert
                log.info("sensitivity table skipped: %s", err)
        kept = set(chosen.denylist)
        if chosen.float_output:
            kept |= set(self._output_producers())
        rows = []
        for i, (kind, node, _, _) in enumerate(self.cal.ops()):
            rows.append({"index": i, "op": kind, "node": node,
                         "scaled_rmse": _round(self.local[node]) if node in self.local else None,
                         "gain": _round(self.gains[node]) if node in self.gains else None,
                         "kept": "float" if node in kept else ("int16" if chosen.int16 else None),
                         "why": chosen.why.get(node)})
        return rows


def _to_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)


def _float32():
    import tensorflow as tf

    return tf.float32


def default_axes(output_names: Sequence[str], shapes: Sequence[Sequence[int]], overrides: dict[str, int]
                 ) -> list[int | None]:
    return [feature_axis(tuple(s), overrides.get(n)) for n, s in zip(output_names, shapes)]


def sensitivity_table(rows: Sequence[dict[str, Any]], top: int = 10) -> list[str]:
    """The ops with the largest local error, as text lines (the failure message, inspect --layers)."""
    ranked = sorted((r for r in rows if r.get("scaled_rmse") is not None), key=lambda r: -r["scaled_rmse"])[:top]
    lines = [f"{'#':>4} {'op':<22} {'RMSE/scale':>10} {'gain':>7}  kept   node"]
    for r in ranked:
        gain = "-" if r.get("gain") is None else f"{r['gain']:.2f}"
        lines.append(f"{r['index']:>4} {r['op']:<22} {r['scaled_rmse']:>10.2f} {gain:>7}  {r.get('kept') or '-':<6} "
                     f"{r['node'][-60:]}")
    return lines


# -- the pipeline stage ----------------------------------------------------------------------------------
def integer_only(target) -> bool:
    """Targets whose runtime has no float kernels worth falling back to (TFLite Micro, Ethos-U)."""
    return target.runtime == "tflm" or target.vela is not None


def eval_set(st) -> EvalSet:
    """The evaluation data (``--eval-data`` or the held-out calibration samples) in the TFLite
    layout, and the source model's outputs on it."""
    from edgepack.calibration.calibrate import input_preprocessing
    from edgepack.calibration.layout import relaxed_specs, to_layouts
    from edgepack.calibration.sources import open_dataset
    from edgepack.formats.detect import ModelFormat

    req, loaded = st.request, st.loaded
    specs = loaded.inputs
    onnx = loaded.format is ModelFormat.ONNX
    if st.heldout is not None:
        ds = st.heldout
    else:
        pre = input_preprocessing(specs, spec=req.calibration.preprocess, recipe=req.recipe)
        ds = open_dataset(req.budget.eval_data, relaxed_specs(specs) if onnx else specs, what="--eval-data",
                          preprocess=pre, label_column=req.calibration.label_column)
    if req.budget.max_drop is not None and ds.labels is None and req.budget.metric is None:
        from edgepack.errors import UsageError

        raise UsageError("--max-drop needs labelled --eval-data (y in an .npz, class subfolders, --label-column)",
                         hint="give labelled --eval-data, a task --metric that compares with the source model, or "
                              "use --min-sqnr / --min-agreement (no labels needed)")
    info = st.info
    in_perm = {n: (f or {}).get("perm") for n, f in st.source_io.get("inputs", {}).items()}
    tfl_shapes = {}
    for i, spec in enumerate(specs):
        idx = info.signature_inputs.get(signature_name(spec.name), info.inputs[i])
        tfl_shapes[spec.name] = info.tensor(idx).shape[1:]
    src, tfl = to_layouts(ds, specs, tfl_shapes, in_perm)
    dtypes = {s.name: s.dtype for s in specs}
    src_arrays = {k: np.concatenate([b[k] for b in src.batches(64, dtypes)]) for k in dtypes}
    tfl_arrays = {k: np.concatenate([b[k] for b in tfl.batches(64)]).astype(np.float32) for k in dtypes}
    refs: list[list[np.ndarray]] = [[] for _ in loaded.output_names]
    stacked = [False] * len(loaded.output_names)
    for start in range(0, len(ds), 32):
        chunk = {k: v[start:start + 32] for k, v in src_arrays.items()}
        n = len(next(iter(chunk.values())))
        outs = [np.asarray(o, np.float32) for o in loaded.run(chunk)]
        if start == 0:  # an output whose leading axis is not the samples' (time-major: steps, 1, classes)
            stacked = [o.ndim == 0 or o.shape[0] != n for o in outs]
        if any(stacked):  # one sample at a time, each output's samples stacked in front
            per = [loaded.run({k: v[j:j + 1] for k, v in chunk.items()}) for j in range(n)]
            outs = [np.stack([np.asarray(p[i], np.float32) for p in per]) if s else o
                    for i, (o, s) in enumerate(zip(outs, stacked))]
        for i, o in enumerate(outs):
            refs[i].append(o)
    ref_arrays = [np.concatenate(r) for r in refs]
    out_perm = [(st.source_io.get("outputs", {}).get(n) or {}).get("perm") for n in loaded.output_names]
    overrides = dict(req.budget.sqnr_axes)
    unknown = set(overrides) - set(loaded.output_names)
    if unknown:
        from edgepack.errors import UsageError

        raise UsageError(f"--sqnr-axis {sorted(unknown)[0]}: the model has no such output",
                         hint=f"outputs: {', '.join(loaded.output_names)}")
    axes = default_axes(loaded.output_names, [r.shape for r in ref_arrays], overrides)
    for name, r in zip(loaded.output_names, ref_arrays):
        if name in overrides and axes[loaded.output_names.index(name)] is None:
            from edgepack.errors import UsageError

            raise UsageError(f"--sqnr-axis {name}:{overrides[name]}: output {name} has shape "
                             f"{'x'.join(map(str, r.shape))}; give a non-batch axis")
    labels = None if ds.labels is None else np.asarray(ds.labels)
    return EvalSet(tfl_arrays, ref_arrays, list(loaded.output_names), out_perm, axes, labels, st.task_metric,
                   tuple(stacked))


def stage_budget(st) -> dict | None:
    """Search for the cheapest candidate that meets the budget; record the search in the manifest
    and the sensitivity table and picture in the bundle."""
    import json

    from edgepack.optimize.quantdebug import plot_sensitivity

    req = st.request
    budget = req.budget
    if not budget.active:
        return None
    if st.calibrated is None:
        from edgepack.errors import ConversionError

        raise ConversionError("the converter kept no calibrated model to search from")
    ev = eval_set(st)
    allow_float = not integer_only(st.target)
    search = Search(st.calibrated, st.tflite, ev, budget, allow_float=allow_float,
                    allow_int16="int16x8" in st.target.quantize_modes,
                    target_ops=st.target.ops if integer_only(st.target) else None)
    result = search.run()
    chosen = result.chosen
    source = "held-out calibration samples" if st.heldout is not None else str(budget.eval_data)
    not_int8 = chosen.ops_out_of_int8()
    record = {
        "budget": {k: v for k, v in (("max_drop_pp", budget.max_drop), ("min_sqnr_db", budget.min_sqnr),
                                     ("min_agreement", budget.min_agreement), ("metric", budget.metric))
                   if v is not None},
        "budget_met": result.met,
        "eval_data": {"source": source, "samples": len(ev), "seed": req.seed},
        "sqnr_axes": {n: a for n, a in zip(ev.output_names, ev.axes)},
        "rule": "SQNR and agreement per output; SQNR per slice along the feature axis (the smallest non-batch axis "
                "of 2..256 elements of a rank>=3 output, the last axis of 2..64 of a rank-2 one, or --sqnr-axis), "
                "the worst slice counts",
        "chosen": {"step": chosen.step, "name": chosen.name, "metric": chosen.score.to_dict(),
                   "float_ops": not_int8["float"], "int16_ops": not_int8["int16"],
                   "float_output": chosen.float_output,
                   "why": chosen.why, "range_methods": chosen.range_methods,
                   "ranges": {k: [round(v[0], 6), round(v[1], 6)] for k, v in chosen.ranges.items()}},
        "candidates": result.trace,
        "notes": result.notes,
        "search_seconds": round(result.seconds, 3),
        "sensitivity": "sensitivity.json",
    }
    st.budget = record
    st.extra_files["sensitivity.json"] = (json.dumps({"rows": result.sensitivity, "chosen": chosen.name},
                                                     indent=1) + "\n", "sensitivity")
    try:
        png = plot_sensitivity(result.sensitivity, f"{req.model.path.name}: per-op int8 error; chosen: "
                                                   f"{chosen.step}, {len(not_int8['float'])} float / "
                                                   f"{len(not_int8['int16'])} int16 ops")
        st.extra_files["sensitivity.png"] = (png, "sensitivity-plot")
    except ImportError as err:  # matplotlib missing: the table is still there
        log.warning("sensitivity.png not drawn: %s", err)
    if chosen.float_output:
        log.warning("the budget keeps the model's outputs float32 (their parts need different int8 scales): "
                    "the device app reads float outputs")
    for note in result.notes:
        log.warning("%s", note)
    if not result.met and not budget.keep_best:
        table = "\n".join(sensitivity_table(result.sensitivity))
        log.error("accuracy budget not met; the ops with the largest error:\n%s", table)
        advice = "try --qat with --train-data, or a larger --calibration set"
        if integer_only(st.target):
            advice += " (this integer-only target allows no float fallback)"
        raise BudgetNotMet(f"no candidate meets the budget ({budget.describe()}); the best, {chosen.name}, reaches "
                           f"{chosen.score.brief()}; nothing was written",
                           hint=f"{advice}; or --keep-best to write it with budget_met false")
    st.tflite = chosen.model
    st.info = read_tflite(chosen.model)
    return {"met": result.met, "chosen": chosen.name, "candidates": len(result.trace),
            "metric": chosen.score.brief()}
