"""Top-down float fallback: every op float, then stretches of the graph given back to int8, the
cheapest first."""

from __future__ import annotations

import math

from edgepack.errors import EdgepackError
from edgepack.pipeline.budget.scoring import Candidate, _float32

STRETCHES = 16  # the graph cut into this many stretches, each measured given back to int8 alone
TOP_DOWN_TRIALS = 40  # candidates spent giving stretches of an all-float candidate back to int8


class TopDown:
    def _top_down(self, start: Candidate) -> Candidate | None:
        """When adding float ops greedily did not reach the budget, the error is spread over the
        graph: start from every op float (inputs stay int8; the outputs float when their slices need
        different scales), measure what giving each of ``STRETCHES`` stretches back to int8 alone
        costs, then give them back the cheapest (per op) first: the longest run of them that still
        meets the budget (bisected), each remaining one that still fits, then halves of the stretches
        left float. None when even all-float misses the budget."""
        keep = set(self.cal.keep_float)  # float in every candidate already (the lstm-float stage's)
        ops = [node for kind, node, _, _ in self.cal.ops() if kind not in ("QUANTIZE", "DEQUANTIZE") and node not in keep]
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
            self.all_float = current
            if current.met:
                break
        if not current.met:
            self.notes.append(f"even every op in float misses the budget ({current.score.brief(self.budget)})")
            return current
        position = {n: i for i, n in enumerate(ops)}
        state = {"deny": list(ops), "current": current, "trials": 0}

        def give_back(nodes: list[str], label: str) -> Candidate | None:
            """The current candidate with ``nodes`` int8 again; taken when it meets the budget."""
            back = set(nodes)
            trial = [n for n in state["deny"] if n not in back]
            if len(trial) == len(state["deny"]) or state["trials"] >= TOP_DOWN_TRIALS:
                return None
            state["trials"] += 1
            try:
                c = self._make("fallback", f"int8 again: {label} ({len(trial)} float)", denylist=tuple(trial), **kw)
            except EdgepackError:
                return None
            if c.met:
                state["deny"], state["current"] = trial, c
            return c

        def span(nodes: list[str]) -> str:
            return f"ops {position[nodes[0]]}..{position[nodes[-1]]}"

        # 1. each stretch alone: the margin it costs, per op
        size = max(1, math.ceil(len(ops) / STRETCHES))
        stretches = [ops[a:a + size] for a in range(0, len(ops), size)]
        top = current.score.margin(self.budget)
        alone = []
        for chunk in stretches:
            c = give_back(chunk, span(chunk))
            if c is not None and c.met:
                alone.append(((top - c.score.margin(self.budget)) / len(chunk), position[chunk[0]], chunk, c))
                state["deny"], state["current"] = list(ops), current  # measured alone: not kept yet
        alone.sort(key=lambda a: a[:2])
        cheapest = [chunk for _, _, chunk, _ in alone]
        # 2. the longest run of the cheapest that still meets the budget (the first alone does), then each other
        lo, hi = min(1, len(cheapest)), len(cheapest)
        if cheapest:
            first = set(cheapest[0])
            state["deny"], state["current"] = [n for n in ops if n not in first], alone[0][3]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            nodes = [n for chunk in cheapest[:mid] for n in chunk]
            saved = list(state["deny"]), state["current"]
            state["deny"], state["current"] = list(ops), current
            c = give_back(nodes, f"the {mid} cheapest stretches")
            if c is not None and c.met:
                lo = mid
            else:
                state["deny"], state["current"] = saved
                hi = mid - 1
        for chunk in cheapest[lo:]:  # the next one broke the run, maybe not alone
            give_back(chunk, span(chunk))
        # 3. halves of the stretches still float
        for chunk in stretches:
            if len(chunk) > 1 and set(chunk) <= set(state["deny"]):
                for half in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]):
                    give_back(half, span(half))
        reason = ("the error is spread over the graph (no small set of float ops reached the budget): "
                  "this stretch stayed float because giving it back to int8 broke the budget")
        chosen = state["current"]
        chosen.why = {n: reason for n in state["deny"]}
        return chosen
