"""The budget stage of the pipeline: run the search, record it in the manifest, write the
sensitivity table and picture, fail with the best candidate's figures when nothing meets the budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepack.errors import BudgetNotMet
from edgepack.pipeline.budget.evalset import eval_set
from edgepack.pipeline.budget.scoring import _float32
from edgepack.pipeline.budget.search import Search, SearchResult
from edgepack.tflite_model import read_tflite
from edgepack.validation.intervals import samples_to_show_agreement, samples_to_show_drop

log = logging.getLogger(__name__)

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


def stage_budget(st) -> dict | None:
    """Search for the cheapest candidate that meets the budget; record the search in the manifest
    and the sensitivity table and picture in the bundle."""
    budget = st.request.budget
    if not budget.active:
        return None
    if st.calibrated is None:
        from edgepack.errors import ConversionError

        raise ConversionError("the converter kept no calibrated model to search from")
    allow_int16 = "int16x8" in st.target.quantize_modes
    if budget.fallback == "int16" and not allow_int16:
        from edgepack.errors import OptionError

        raise OptionError("--fallback", "int16", hint=f"target {st.target.name} does not allow int16x8 (its "
                                                      "quantize_modes): use --target generic, or --fallback float")
    ev = eval_set(st)
    too_small = sample_shortfall(budget, ev)
    if too_small:
        log.warning("%s", too_small)
    search = Search(st.calibrated, st.tflite, ev, budget, allow_float=not integer_only(st.target),
                    allow_int16=allow_int16,
                    target_ops=st.target.ops if integer_only(st.target) else None)
    result = search.run()
    if too_small:
        result.notes.insert(0, too_small)
    chosen = result.chosen
    st.budget = budget_record(st, ev, result)
    _write_sensitivity(st, result)
    if chosen.float_output:
        log.warning("the budget keeps the model's outputs float32 (their parts need different int8 scales): "
                    "the device app reads float outputs")
    for note in result.notes:
        log.warning("%s", note)
    if not result.met and not budget.keep_best:
        _fail(st, result)
    st.tflite = chosen.model
    st.info = read_tflite(chosen.model)
    return {"met": result.met, "chosen": chosen.name, "candidates": len(result.trace),
            "metric": chosen.score.brief(budget)}


def budget_record(st, ev, result: SearchResult) -> dict[str, Any]:
    """The manifest's ``budget``: the budget, the evaluation data, every candidate and the chosen one."""
    budget, chosen = st.request.budget, result.chosen
    source = "held-out calibration samples" if st.heldout is not None else str(budget.eval_data)
    not_int8 = chosen.ops_out_of_int8()
    return {
        "budget": {k: v for k, v in (("max_drop_pp", budget.max_drop), ("min_sqnr_db", budget.min_sqnr),
                                     ("min_agreement", budget.min_agreement), ("metric", budget.metric))
                   if v is not None},
        "confidence": budget.confidence,
        "budget_met": result.met,
        "eval_data": {"source": source, "samples": len(ev), "seed": st.request.seed},
        "sqnr_axes": {n: a for n, a in zip(ev.output_names, ev.axes)},
        "rule": "SQNR and agreement per output; SQNR per slice along the feature axis (the smallest non-batch axis "
                "of 2..256 elements of a rank>=3 output, the last axis of 2..64 of a rank-2 one, or --sqnr-axis), "
                "the worst slice counts; met when the bound of each figure's interval meets the budget (lower bound "
                "of agreement (Wilson) and SQNR (bootstrap over samples), upper bound of a drop (Newcombe's paired "
                "interval for top-1 accuracy, paired bootstrap for a task metric))",
        "chosen": {"step": chosen.step, "name": chosen.name, "metric": chosen.score.to_dict(budget),
                   "float_ops": not_int8["float"], "int16_ops": not_int8["int16"],
                   "float_output": chosen.float_output, "built": "splice" if chosen.spliced else "quantizer",
                   "why": chosen.why, "range_methods": chosen.range_methods,
                   "ranges": {k: [round(v[0], 6), round(v[1], 6)] for k, v in chosen.ranges.items()}},
        "candidates": result.trace,
        "notes": result.notes,
        "search_seconds": round(result.seconds, 3),
        "sensitivity": "sensitivity.json",
    }


def _write_sensitivity(st, result: SearchResult) -> None:
    """sensitivity.json and sensitivity.png into the bundle (the picture only when matplotlib is there)."""
    import json

    from edgepack.optimize.quantdebug import plot_sensitivity

    chosen = result.chosen
    not_int8 = chosen.ops_out_of_int8()
    st.extra_files["sensitivity.json"] = (json.dumps({"rows": result.sensitivity, "chosen": chosen.name},
                                                     indent=1) + "\n", "sensitivity")
    try:
        png = plot_sensitivity(result.sensitivity, f"{st.request.model.path.name}: per-op int8 error; chosen: "
                                                   f"{chosen.step}, {len(not_int8['float'])} float / "
                                                   f"{len(not_int8['int16'])} int16 ops")
        st.extra_files["sensitivity.png"] = (png, "sensitivity-plot")
    except ImportError as err:  # matplotlib missing: the table is still there
        log.warning("sensitivity.png not drawn: %s", err)


def _fail(st, result: SearchResult) -> None:
    """No candidate met the budget and --keep-best was not given: the best one's figures and advice."""
    budget, chosen = st.request.budget, result.chosen
    table = "\n".join(sensitivity_table(result.sensitivity))
    log.error("accuracy budget not met; the ops with the largest error:\n%s", table)
    advice = _advice(st, result)
    raise BudgetNotMet(f"no candidate meets the budget ({budget.describe()}); the best, {chosen.name}, reaches "
                       f"{chosen.score.brief(budget)}; nothing was written",
                       hint=f"{advice}; or --keep-best to write it with budget_met false")


def _advice(st, result: SearchResult) -> str:
    """What would lift the limit: the evaluation set's size when even every op float meets the budget's
    figures but not their bounds; the I/O quantization when every op float misses it; else QAT or
    more calibration data."""
    budget, every = st.request.budget, result.all_float
    if every is not None and every.score.margin(budget) >= 0:
        return (f"every op float reaches {every.score.brief(budget)}: the figures meet the budget, the bounds of "
                f"their {budget.confidence:g} intervals on {len(every.score.sample_error)} samples do not; "
                "give more --eval-data (or more --calibration data for the held-out part)")
    if every is not None and _source_rounding_removed(st):
        return (f"the source's own run-time rounding bounds it: even every op float ({every.score.brief(budget)}) is "
                "this dynamically quantized model without the 8-bit rounding onnxruntime applies to its activations "
                "as it runs, which the calibrated modes replace; no QAT or calibration lifts that; convert with "
                "--quantize dynamic (the scheme it was quantized with) or --quantize none (its rounding kept as "
                "float ops)")
    if every is not None and st.calibrated is not None and st.calibrated.input_type != _float32():
        figure = "" if every is result.chosen else f" ({every.name}: {every.score.brief(budget)})"
        return (f"the int8 input bounds it: even every op float misses the budget{figure}, and no QAT or "
                "calibration lifts that; convert with --quantize int8-float-io (integer inside, float input and "
                "output)")
    advice = "try --qat with --train-data, or a larger --calibration set"
    if integer_only(st.target):
        advice += " (this integer-only target allows no float fallback)"
    return advice


def _source_rounding_removed(st) -> bool:
    """The source is a dynamically quantized ONNX model whose run-time activation rounding the graph stage
    removed (calibrated modes): the budget's reference still has it."""
    return ((st.graph or {}).get("dequantized") or {}).get("activation_rounding") == "removed"


def sample_shortfall(budget, ev) -> str | None:
    """One line when the evaluation set is too small to show the budget even if every sample agrees."""
    n, level = len(ev), f"{budget.confidence:g}"
    shown = []
    if budget.min_agreement is not None:
        need = samples_to_show_agreement(budget.min_agreement, budget.confidence)
        if need is None or need > n:
            shown.append(f"top-1 agreement >= {budget.min_agreement:g}" +
                         (f" needs {need} samples" if need else " cannot be shown on any number of samples"))
    if budget.max_drop is not None and budget.metric is None and ev.labels is not None:
        ref = ev.refs[0].reshape(n, -1).argmax(axis=-1)
        y = np.asarray(ev.labels)
        y = (y.argmax(axis=-1) if y.ndim == ev.refs[0].ndim and y.ndim > 1 else y).reshape(-1)
        need = samples_to_show_drop(budget.max_drop / 100.0, float(np.mean(ref == y)), budget.confidence)
        if need is None or need > n:
            shown.append(f"an accuracy drop <= {budget.max_drop:g} pp needs {need or 'over 10 million'} samples")
    if not shown:
        return None
    return (f"the evaluation set ({n} samples) is too small to show the budget at {level} confidence even if "
            f"every sample agrees: {'; '.join(shown)}; give more --eval-data or --calibration data")
