"""Greedy float fallback: ops kept float by sensitivity, gain per cost, round after round."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from edgepack.errors import EdgepackError
from edgepack.pipeline.budget.evalset import EvalSet
from edgepack.pipeline.budget.scoring import STRUCTURAL, Candidate, _float32, score

log = logging.getLogger(__name__)

MAX_ROUNDS = 6  # greedy fallback rounds
SEGMENTS = 8  # contiguous groups of ops probed as one
DROP_TRIALS = 16  # candidates spent dropping fallbacks no longer needed
NARROW_KEEP = 0.75  # a half of a group replaces the group when it keeps this share of the gain
PROBE_OPS = 12  # ops whose whole-model effect is measured (the largest local errors, plus output producers)
# single ops probed in a row that leave the budget's figure exactly where it was before the rest are skipped:
# a figure that counts decisions (strings, top-1) on the ranking samples is not moved by one op (the OCR
# recognizer's strings budget: 15 probes, every gain 0.00); stretches of ops are still probed
PROBE_PATIENCE = 4


@dataclass
class _Fallbacks:
    """The greedy search's state: the best candidate so far, its float ops and why each is float."""

    current: Candidate
    deny: list[str] = field(default_factory=list)
    fout: bool = False
    why: dict[str, str] = field(default_factory=dict)


class GreedyFallback:
    """The greedy float-fallback strategy of :class:`~edgepack.pipeline.budget.search.Search`."""

    def _fallback(self, start: Candidate) -> Candidate | None:
        """Greedy rounds: probe every remaining option on top of the current fallbacks (on the
        ranking samples), take the best gain per cost, confirm it on the whole evaluation set (undone
        when it does not help), until the budget is met; then drop fallbacks no longer needed."""
        rank_ev = self._ranking_set(start)
        self.progress("sensitivity")
        self.local = self._local(start, rank_ev)
        options = self._options(start)
        state = _Fallbacks(start)
        for round_ in range(MAX_ROUNDS):
            base_rank = score(state.current.model, rank_ev).margin(self.budget)
            before = state.current.score.margin(self.budget)
            ranked = self._probe_all(options, state, start, rank_ev, base_rank, first=round_ == 0)
            if not self._accept_best(ranked, state, start, rank_ev, base_rank) or state.current.met:
                break
            gain, gap, left = state.current.score.margin(self.budget) - before, \
                -state.current.score.margin(self.budget), MAX_ROUNDS - round_ - 1
            if gain * left < gap:  # even this round's gain every round left would not reach the budget
                log.info("budget: float fallback op by op stopped after round %d: it gained %.2f, %.2f short with "
                         "%d round(s) left: the error is spread (the top-down pass follows)", round_ + 1, gain, gap, left)
                break
        if not state.current.met:
            state.current.why = state.why
            return state.current if state.current is not start else None
        return self._drop_unneeded(state, start)

    def _options(self, start: Candidate) -> list[tuple[str, tuple[str, ...], bool, float]]:
        """What a round may keep float, ``(label, nodes, float output, cost)``: the ops with the largest
        local error and the output producers one by one, contiguous stretches of the graph (error that
        builds up over many ops), and the float output when the output's slices need different scales."""
        ops = self.cal.ops()
        producers = self._output_producers()
        weights = self._weight_share(ops)
        keep = set(self.cal.keep_float)  # float in every candidate already: keeping them float changes nothing
        compute = {node: kind for kind, node, _, _ in ops if kind not in STRUCTURAL and node not in keep}
        by_local = sorted((n for n in compute if n in self.local), key=lambda n: -self.local[n])
        probes = list(dict.fromkeys([*by_local[:PROBE_OPS], *[p for p in producers if p in compute]]))
        options = [(node, (node,), False, 1.0 + 10.0 * weights.get(node, 0.0)) for node in probes]
        order = [node for kind, node, _, _ in ops]
        size = max(2, math.ceil(len(order) / SEGMENTS))
        for a in range(0, len(order), size):
            group = tuple(n for n in order[a:a + size] if n in compute)
            if len(group) > 1:
                cost = 1.0 + 10.0 * len(group) / len(order) + 10.0 * sum(weights.get(n, 0.0) for n in group)
                options.append((f"ops {a}..{min(a + size, len(order)) - 1}", group, False, cost))
        if self.cal.output_type != _float32() and self._output_needs_float(start):
            options.append(("float output", tuple(producers), True, 2.0))
        return options

    def _probe_all(self, options, state: _Fallbacks, start: Candidate, rank_ev: EvalSet, base_rank: float,
                   first: bool) -> list[tuple[float, float, tuple]]:
        """Every option not yet taken, on top of the current fallbacks, on the ranking samples:
        ``(gain per cost, gain, option)``, best first. Records each op's gain for the sensitivity table."""
        ranked, unmoved = [], 0
        for opt in options:
            label, nodes, f_out, cost = opt
            if set(nodes) <= set(state.deny) and (state.fout or not f_out):
                continue
            single = len(nodes) == 1 and not f_out
            if single and unmoved >= PROBE_PATIENCE:
                continue
            try:
                c = self._make("fallback", f"probe {label}", ev=rank_ev, ranges=start.ranges,
                               denylist=tuple(dict.fromkeys([*state.deny, *nodes])), float_output=state.fout or f_out)
            except EdgepackError as err:
                log.info("budget: probe %s failed: %s", label, err.message)
                continue
            gain = c.score.margin(self.budget) - base_rank
            log.info("budget: probe %s: gain %.2f on the ranking samples", label[-60:], gain)
            if single:
                unmoved = unmoved + 1 if gain == 0 else 0
            if single and unmoved == PROBE_PATIENCE:
                log.info("budget: %d single ops in a row left the budget's figure unchanged: the other single ops "
                         "are not probed this round (stretches are)", PROBE_PATIENCE)
            for n in nodes:
                self.gains[n] = round(max(self.gains.get(n, -math.inf), gain), 4) if first else \
                    self.gains.get(n, round(gain, 4))
            ranked.append((gain / cost, gain, opt))
        ranked.sort(key=lambda g: -g[0])
        return ranked

    def _accept_best(self, ranked, state: _Fallbacks, start: Candidate, rank_ev: EvalSet, base_rank: float) -> bool:
        """Confirm the best of the top three probes on the whole evaluation set; True when one helped."""
        for _per_cost, gain, (label, nodes, f_out, _) in ranked[:3]:
            if gain <= 0.05:
                break
            if len(nodes) > 1 and not f_out:  # a stretch of ops: the half that carries the gain, recursively
                nodes, gain, label = self._narrow(nodes, gain, label, state.deny, state.fout, start, rank_ev,
                                                  base_rank)
            trial = list(dict.fromkeys([*state.deny, *nodes]))
            c = self._make("fallback", "float output (and the ops computing its parts)" if f_out
                           else f"+ float {label}", denylist=tuple(trial), ranges=start.ranges,
                           range_methods=start.range_methods, float_output=state.fout or f_out)
            if c.score.margin(self.budget) > state.current.score.margin(self.budget):
                state.deny, state.fout, state.current = trial, state.fout or f_out, c
                for n in nodes:
                    state.why[n] = ("an output's slices need different scales: the output is float" if f_out else
                                    f"local error {self.local.get(n, 0):.1f} int8 steps; keeping "
                                    f"{'it' if len(nodes) == 1 else label} float gained {gain:.2f} (budget units) "
                                    "on the worst samples")
                return True
        return False

    def _drop_unneeded(self, state: _Fallbacks, start: Candidate) -> Candidate:
        """Drop fallbacks no longer needed: quarters of the list first, then single ops, at most DROP_TRIALS."""
        direct = set(self._output_producers(direct=True))
        removable = [n for n in state.deny if not (state.fout and n in direct)]
        step = max(1, len(removable) // 4)
        chunks = [removable[i:i + step] for i in range(0, len(removable), step)]
        chunks = (chunks if len(removable) > 4 else []) + [[n] for n in reversed(removable)]
        trials = 0
        for chunk in chunks:
            if trials >= DROP_TRIALS:
                break
            if not set(chunk) <= set(state.deny):
                continue
            trial = tuple(n for n in state.deny if n not in chunk)
            trials += 1
            c = self._make("fallback", f"- float {chunk[0] if len(chunk) == 1 else f'{len(chunk)} ops'}",
                           denylist=trial, ranges=start.ranges, range_methods=start.range_methods,
                           float_output=state.fout)
            if c.met:
                state.deny, state.current = list(trial), c
                for n in chunk:
                    state.why.pop(n, None)
        state.current.why = {n: w for n, w in state.why.items() if n in state.deny}
        return state.current

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

