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
   undone when it did not help, then fallbacks no longer needed dropped again; the rounds stop
   early when a round's gain, repeated every round left, would not reach the budget.
   An int8 output whose slices need different scales can be made float (with its producer op);
   that changes what the device app reads and is recorded and printed. When no small set of
   float ops gets there (the error is spread over the graph), the search starts from the other end:
   every op float, each of up to 16 contiguous stretches measured given back to int8 alone, then given
   back cheapest first (the longest run that still meets the budget, each other that fits, then
   halves of the stretches left float);
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

from edgepack.pipeline.budget.evalset import EvalSet, default_axes, eval_set, holdout_wanted
from edgepack.pipeline.budget.scoring import Candidate, Runner, Score, score
from edgepack.pipeline.budget.search import Search, SearchResult
from edgepack.pipeline.budget.stage import integer_only, sensitivity_table, stage_budget

__all__ = ["Candidate", "EvalSet", "Runner", "Score", "Search", "SearchResult", "default_axes", "eval_set",
           "holdout_wanted", "integer_only", "score", "sensitivity_table", "stage_budget"]
