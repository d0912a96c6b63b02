"""Top-down float fallback: every op float, then stretches of the graph given back to int8, the
cheapest first."""

from __future__ import annotations

import math
from typing import Any

from edgepack.errors import EdgepackError
from edgepack.pipeline.budget.scoring import Candidate, _float32

STRETCHES = 16  # the graph cut into stretches of ceil(ops / STRETCHES) ops, each measured given back to int8 alone
TOP_DOWN_TRIALS = 40  # candidates spent giving stretches of an all-float candidate back to int8


class _GiveBack:
    """The top-down state: the ops still float, the candidate they make, the candidates spent."""

    def __init__(self, search, ops: list[str], all_float: Candidate, kw: dict[str, Any]) -> None:
        self.search, self.ops, self.all_float, self.kw = search, ops, all_float, kw
        self.back = "int16" if kw.get("int16") else "int8"  # what a stretch given back becomes
        self.position = {n: i for i, n in enumerate(ops)}
        self.deny, self.current, self.trials = list(ops), all_float, 0

    def span(self, nodes: list[str]) -> str:
        return f"ops {self.position[nodes[0]]}..{self.position[nodes[-1]]}"

    def reset(self, deny: list[str] | None = None, current: Candidate | None = None) -> None:
        self.deny, self.current = list(deny if deny is not None else self.ops), current or self.all_float

    def __call__(self, nodes: list[str], label: str) -> Candidate | None:
        """The current candidate with ``nodes`` int8 again; taken when it meets the budget."""
        back = set(nodes)
        trial = [n for n in self.deny if n not in back]
        if len(trial) == len(self.deny) or self.trials >= TOP_DOWN_TRIALS:
            return None
        self.trials += 1
        try:
            c = self.search._make("fallback", f"{self.back} again: {label} ({len(trial)} float)",
                                  denylist=tuple(trial), **self.kw)
        except EdgepackError:
            return None
        if c.met:
            self.deny, self.current = trial, c
        return c


class TopDown:
    def _top_down(self, start: Candidate, int16: bool = False) -> Candidate | None:
        """When adding float ops greedily did not reach the budget, the error is spread over the
        graph: start from every op float (inputs stay int8; the outputs float when their slices need
        different scales), measure what giving each of ``STRETCHES`` stretches back to int8 alone
        costs, then give them back the cheapest (per op) first: the longest run of them that still
        meets the budget (bisected), each remaining one that still fits, then halves of the stretches
        left float. None when even all-float misses the budget. ``int16``: over the int16x8 quantization
        (``start``; float I/O), the stretches given back to int16 (spliced: ``--fallback int16``)."""
        # float in every int8 candidate already (the lstm-float stage's cells); int16 in the int16x8 quantization
        keep = set() if int16 else set(self.cal.keep_float)
        ops = [node for kind, node, _, _ in (self.cal16 if int16 else self.cal).ops()
               if kind not in ("QUANTIZE", "DEQUANTIZE") and node not in keep]
        int8_out = self.cal.output_type != _float32() and not int16
        current = None
        # int8 outputs first (what the app reads stays the same), float outputs when int8 ones cannot meet it
        for fout in dict.fromkeys([int8_out and self._output_needs_float(start), int8_out]):
            kw = (dict(int16=True, allow_float=self.allow_float) if int16 else
                  dict(ranges=start.ranges, range_methods=start.range_methods, float_output=fout))
            try:
                current = self._make("fallback", "every op float" + (", float outputs" if fout else ""),
                                     denylist=tuple(ops), **kw)
            except EdgepackError as err:
                self.notes.append(f"all-float candidate failed: {err.message}")
                return None
            self.all_float = current
            if current.met:
                break
        if not current.met:
            self.notes.append(f"even every op in float misses the budget ({current.score.brief(self.budget)})")
            return current
        give = _GiveBack(self, ops, current, kw)
        size = max(1, math.ceil(len(ops) / STRETCHES))
        stretches = [ops[a:a + size] for a in range(0, len(ops), size)]
        _cheapest_first(give, stretches)
        for chunk in stretches:  # then halves of the stretches still float
            if len(chunk) > 1 and set(chunk) <= set(give.deny):
                for half in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]):
                    give(half, give.span(half))
        reason = ("the error is spread over the graph (no small set of float ops reached the budget): "
                  "this stretch stayed float because giving it back to int8 broke the budget")
        give.current.why = {n: reason for n in give.deny}
        return give.current


def _cheapest_first(give: _GiveBack, stretches: list[list[str]]) -> None:
    """Each stretch given back alone (the margin it costs per op), then the cheapest first: the longest
    run that still meets the budget (bisected; the first alone does), then each other one that fits."""
    top = give.all_float.score.margin(give.search.budget)
    alone = []
    for chunk in stretches:
        c = give(chunk, give.span(chunk))
        if c is not None and c.met:
            alone.append(((top - c.score.margin(give.search.budget)) / len(chunk), give.position[chunk[0]], chunk, c))
            give.reset()  # measured alone: not kept yet
    alone.sort(key=lambda a: a[:2])
    cheapest = [chunk for _, _, chunk, _ in alone]
    if not cheapest:
        return
    first = set(cheapest[0])
    give.reset([n for n in give.ops if n not in first], alone[0][3])
    lo, hi = 1, len(cheapest)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        saved = give.deny, give.current
        give.reset()
        c = give([n for chunk in cheapest[:mid] for n in chunk], f"the {mid} cheapest stretches")
        if c is not None and c.met:
            lo = mid
        else:
            give.reset(*saved)
            hi = mid - 1
    for chunk in cheapest[lo:]:  # the next one broke the run, maybe not alone
        give(chunk, give.span(chunk))
