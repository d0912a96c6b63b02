"""The search: candidates in cost order (full int8, activation ranges, float fallback greedy and
top-down, int16x8), each a re-quantization of the once-calibrated model, scored on the evaluation set."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.converter.requantize import Calibrated
from edgepack.errors import EdgepackError
from edgepack.pipeline.budget.evalset import EvalSet
from edgepack.pipeline.budget.greedy import GreedyFallback
from edgepack.pipeline.budget.scoring import STRUCTURAL, Candidate, _round, _to_float, score
from edgepack.pipeline.budget.topdown import TopDown
from edgepack.request import BudgetOptions
from edgepack.tflite_model import read_tflite

log = logging.getLogger(__name__)

RANKING_SAMPLES = 16  # the evaluation samples with the largest error: where sensitivity is measured
CACHED_MODELS = 32  # quantized candidates kept for reuse (a round probes up to ~22 options)



@dataclass
class SearchResult:
    chosen: Candidate
    met: bool
    trace: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    notes: list[str]
    seconds: float
    all_float: Candidate | None = None  # every op float (inputs int8): what the I/O quantization alone allows


class Search(GreedyFallback, TopDown):
    def __init__(self, calibrated: Calibrated, baseline: bytes, ev: EvalSet, budget: BudgetOptions, *,
                 allow_float: bool, allow_int16: bool, target_ops: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None, latency: bool = True, splice: bool = True) -> None:
        self.cal, self.baseline, self.ev, self.budget = calibrated, baseline, ev, budget
        self.allow_float, self.allow_int16, self.target_ops = allow_float, allow_int16, target_ops
        self.progress = progress or (lambda s: None)
        self.latency = latency
        self.tried: list[Candidate] = []
        self.notes: list[str] = []
        self.local: dict[str, float] = {}
        self.gains: dict[str, float] = {}
        self._ranking: EvalSet | None = None
        self.all_float: Candidate | None = None  # the top-down pass's every-op-float candidate
        self._models: dict[tuple, bytes] = {}  # quantized candidates by their settings: a probe confirmed is not redone
        self._spliced_keys: set[tuple] = set()  # settings whose cached model is a splice
        self._splicers: dict[tuple, Any] = {}  # by (ranges, float output): the splicer over that base quantization
        self.splice = splice
        self._int16: bytes | None = None  # the int16x8 quantization, made once (the base of int16 splices)
        self._cal16: Calibrated | None = None

    @property
    def cal16(self) -> Calibrated:
        """The calibrated model as int16x8 quantizes it (HARD_SWISH, RELU_0_TO_1 written as ops with int16 kernels):
        the ops and node names of every int16 candidate."""
        if self._cal16 is None:
            self._cal16 = self.cal.for_int16()
        return self._cal16

    # -- helpers -------------------------------------------------------------------------------------
    def _make(self, step: str, name: str, *, model: bytes | None = None, ev: EvalSet | None = None,
              exact: bool = False, **kw: Any) -> Candidate:
        """A candidate scored on ``ev`` (the evaluation set when None): ``model``, or the calibrated model
        quantized with ``kw``'s settings -- spliced (:mod:`edgepack.converter.splice`) when only ops are
        added to the denylist, by the quantizer when ``exact`` or a splice cannot be made."""
        start = time.perf_counter()
        allow_float = kw.pop("allow_float", False)
        spliced = False
        if model is None:
            ranges = kw.get("ranges") or {}
            # ops every quantization keeps float (the lstm-float stage's) are float with or without the denylist
            keep = () if kw.get("int16") else self.cal.keep_float  # int16x8 has them int16 unless denylisted
            key = (tuple(sorted(set(kw.get("denylist", ())) | set(keep))), tuple(sorted(ranges.items())),
                   kw.get("float_output", False), kw.get("int16", False), allow_float)
            model = self._models.get(key) if not exact else None
            if model is None:
                model = self._spliced(kw) if not exact else None
                spliced = model is not None
                if model is None and kw.get("int16") and kw.get("denylist"):
                    # the int16x8 quantizer takes no denylist: int16 with float ops exists only as a splice
                    raise EdgepackError("int16 activations with float ops could not be spliced")
                if model is None:
                    model = (self.cal16 if kw.get("int16") else self.cal).quantize(
                        denylist=kw.get("denylist", ()), ranges=ranges or None,
                        float_output=kw.get("float_output", False), int16=kw.get("int16", False),
                        allow_float=allow_float)
                self._models[key] = model
                if len(self._models) > CACHED_MODELS:  # the oldest goes: a round's probes are what gets confirmed
                    self._models.pop(next(iter(self._models)))
            else:
                spliced = key in self._spliced_keys
            (self._spliced_keys.add if spliced else self._spliced_keys.discard)(key)
        try:
            sc = score(model, ev or self.ev)
        except Exception as err:  # a splice LiteRT refuses: the quantizer's model for the same settings
            if not spliced:
                raise
            if kw.get("int16"):
                self._models.pop(key, None)
                raise EdgepackError(f"an int16 splice failed to run: {err}") from err
            log.info("budget: a spliced candidate failed to run (%s); quantized instead", err)
            self._models.pop(key, None)
            self._spliced_keys.discard(key)
            return self._make(step, name, model=None, ev=ev, exact=True, allow_float=allow_float, **kw)
        cand = Candidate(step, name, model, sc, spliced=spliced, **kw)
        cand.met = ev is None and sc.meets(self.budget)  # the bounds of the intervals, not only the figures
        cand.seconds = time.perf_counter() - start
        if ev is None:
            self.tried.append(cand)
            log.info("budget: %s (%s): %s%s", step, name, sc.brief(self.budget if cand.met else None),
                     " -- meets the budget" if cand.met else "")
            self.progress(f"{step}: {sc.brief()}")
        return cand

    def _spliced(self, kw: dict[str, Any]) -> bytes | None:
        """The candidate spliced from its base quantization (same ranges and outputs, no op added to the
        denylist; quantized once and kept), or None: not a denylist candidate, or not spliceable."""
        from edgepack.converter.splice import Splicer

        int16 = bool(kw.get("int16", False))  # over the int16x8 quantization (its own ranges, float I/O)
        # the int8 base has the always-float ops (lstm-float's cells) float already; the int16x8 one has them int16
        deny = set(kw.get("denylist", ())) - (set() if int16 else set(self.cal.keep_float))
        if not self.splice or not deny:
            return None
        ranges = kw.get("ranges") or {}
        bkey = ("int16",) if int16 else (tuple(sorted(ranges.items())), kw.get("float_output", False))
        if bkey not in self._splicers:
            base = (self._int16_base() if int16 else
                    self.cal.quantize(ranges=ranges or None, float_output=bkey[1]))
            first = next((s for k, s in self._splicers.items() if k != ("int16",)), None) if not int16 else None
            try:
                self._splicers[bkey] = Splicer((self.cal16 if int16 else self.cal).model, base,
                                               unpacked=first.cal if first is not None else None)
            except Exception as err:  # a graph the splicer cannot read: every candidate from the quantizer
                log.info("budget: candidates are not spliced (%s)", err)
                self.splice = False
                return None
        try:
            return self._splicers[bkey].build(deny)
        except Exception as err:  # a bug of the splice must not fail the search: the quantizer makes this one
            log.info("budget: splicing a candidate failed (%s); quantized instead", err)
            return None

    def _int16_base(self) -> bytes:
        """The int16x8 quantization (float where int16 has no kernel, when float is allowed; its own
        calibration pass): made once, the full-int16 candidate's model."""
        if self._int16 is None:
            self._int16 = self.cal16.quantize(int16=True, allow_float=self.allow_float)
        return self._int16

    def _exact(self, chosen: Candidate) -> Candidate:
        """A spliced choice quantized again by the quantizer: that model when it meets the budget too (the
        bundle then holds what ``mlir_quantize`` makes), else the splice (what was measured to meet)."""
        if chosen.int16:  # no quantizer makes int16 with float ops: the splice is the model
            self.notes.append("int16 activations with float ops: the bundle holds the splice that was measured "
                              "(the int16x8 quantizer takes no list of float ops)")
            return chosen
        kw = dict(denylist=chosen.denylist, ranges=chosen.ranges, range_methods=chosen.range_methods,
                  float_output=chosen.float_output)
        try:
            again = self._make(chosen.step, f"{chosen.name}, quantized again", exact=True, **kw)
        except EdgepackError as err:
            self.notes.append(f"the spliced choice could not be quantized again ({err.message}): the splice is kept")
            return chosen
        if again.met:
            again.why = chosen.why
            return again
        self.notes.append("the spliced choice quantized again by the quantizer misses the budget "
                          f"({again.score.brief(self.budget)}): the splice, which meets it, is kept")
        return chosen

    def best(self) -> Candidate:
        return max(self.tried, key=lambda c: c.score.margin(self.budget))

    # -- the search ----------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        start = time.perf_counter()
        chosen = self._search()
        if chosen is not None and chosen.spliced:
            chosen = self._exact(chosen)
        met = chosen is not None
        if chosen is None:
            chosen = self.best()
        sens = self.sensitivity(chosen)
        # LiteRT p50 for the two candidates a reader compares (full int8 and the chosen one): measuring it
        # for every rejected candidate cost as much as scoring them
        trace = [c.record(self.budget, self.latency and (i == 0 or c is chosen)) for i, c in enumerate(self.tried)]
        return SearchResult(chosen, met, trace, sens, self.notes, time.perf_counter() - start, self.all_float)

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
        if self.budget.fallback == "int16" and self.allow_int16:
            # --fallback int16: int16x8, then float only for the stretches int16 cannot carry
            c16 = self._full_int16()
            if c16 is not None and c16.met:
                return c16
            if c16 is not None and self.allow_float and self.splice:
                down = self._top_down(c16, int16=True)
                if down is not None and down.met:
                    return down
            return None
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
            c16 = self._full_int16()
            if c16 is not None and c16.met:
                return c16
        else:
            self.notes.append("the target does not allow int16x8")
        return None

    def _full_int16(self) -> Candidate | None:
        try:
            c16 = self._make("int16x8", "int16 activations" + (", float where int16 has no kernel"
                                                               if self.allow_float else ""),
                             int16=True, allow_float=self.allow_float)
        except EdgepackError as err:
            self.notes.append(f"int16x8 failed: {err.message}")
            return None
        self._int16 = c16.model
        c16.why = {"*": "int16x8: no int8 candidate met the budget, so every activation is int16"}
        bad = self._unsupported(c16.model)
        if bad:
            c16.met = False
            self.notes.append(f"int16x8 uses ops the target does not register: {', '.join(bad)}")
        return c16

    def _unsupported(self, model: bytes) -> list[str]:
        if self.target_ops is None:
            return []
        return sorted(set(read_tflite(model, verify=False).ops) - set(self.target_ops))

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

        keep = set(self.cal.keep_float)  # float in every candidate: no int8 error to measure
        names = [node for _, node, _, _ in self.cal.ops() if node not in keep]
        order = _interpreter_order(self.cal.model, list(ev.inputs))
        samples = [[ev.sample(i)[k] for k in order] for i in range(len(ev))]
        fl = run_all_tensors(self.cal.model, [[_to_float(a) for a in s] for s in samples], names)
        qv = run_all_tensors(cand.model, [[_to_float(a) for a in s] for s in samples], names)
        info = read_tflite(cand.model, verify=False)
        scales = {t.name: t.scale for t in info.tensors if t.scale}
        return local_errors(fl, qv, scales)

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
        kept = set(chosen.denylist) | set(self.cal.keep_float)
        if chosen.float_output:
            kept |= set(self._output_producers())
        rows = []
        for i, (kind, node, _, _) in enumerate((self.cal16 if chosen.int16 else self.cal).ops()):
            rows.append({"index": i, "op": kind, "node": node,
                         "scaled_rmse": _round(self.local[node]) if node in self.local else None,
                         "gain": _round(self.gains[node]) if node in self.gains else None,
                         "kept": "float" if node in kept else ("int16" if chosen.int16 else None),
                         "why": chosen.why.get(node)})
        return rows


def _interpreter_order(model: bytes, names: list[str]) -> list[str]:
    """The model's input names in the interpreter's input order (run_all_tensors feeds them so)."""
    from edgepack.formats.base import signature_name

    info = read_tflite(model)
    index = {n: info.signature_inputs.get(signature_name(n), info.inputs[i]) for i, n in enumerate(names)}
    return sorted(names, key=lambda n: list(info.inputs).index(index[n]) if index[n] in info.inputs else len(names))
