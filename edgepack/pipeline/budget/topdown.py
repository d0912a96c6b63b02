"""Top-down float fallback: every op float, then stretches of the graph given back to int8."""

from __future__ import annotations

import math

from edgepack.errors import EdgepackError
from edgepack.pipeline.budget.scoring import Candidate, _float32

TOP_DOWN_TRIALS = 40  # candidates spent giving stretches of an all-float candidate back to int8
TOP_DOWN_LEVELS = 5  # stretch sizes tried: 1/2, 1/4 ... 1/32 of the graph


class TopDown:
    def _top_down(self, start: Candidate) -> Candidate | None:
        """When adding float ops greedily did not reach the budget, the error is spread over the
        graph: start from every op float (inputs stay int8; the outputs float when their slices need
        different scales) and give contiguous stretches back to int8, halves first, then quarters...,
        keeping each that still meets the budget. None when even all-float misses it."""
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
        deny, trials, sizes = list(ops), 0, []
        for level in range(1, TOP_DOWN_LEVELS + 1):
            size = max(1, math.ceil(len(ops) / 2 ** level))
            if size in sizes:  # a small graph: the same stretches again would give the same answers
                break
            sizes.append(size)
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

