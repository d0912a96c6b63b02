"""The page's sections as plain data, from the manifest and validation.json (dicts as stored)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from edgepack.report.page import interval, value

_METRICS = (("accuracy_bundle", "accuracy (bundle)", "pct"), ("accuracy_reference", "accuracy (reference)", "pct"),
            ("top1_agreement", "top-1 agreement with the reference", "pct"),
            ("accuracy_drop_pp", "accuracy drop (pp)", "num"))


def _target_limits(name: str) -> tuple[int | None, int | None]:
    """(flash, RAM) bytes of a known target profile; (None, None) for a name this edgepack lacks."""
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    try:
        spec = load_target(name)
    except EdgepackError:
        return None, None
    return spec.flash_bytes, spec.ram_bytes


def meter(label: str, used: int | None, limit: int | None, key: str) -> dict[str, Any]:
    frac = used / limit if used is not None and limit else None
    return {"label": label, "used": used, "limit": limit, "fraction": frac, "over": frac is not None and frac > 1,
            "key": key}


def _model_bytes(m: Mapping[str, Any]) -> int | None:
    return next((a["bytes"] for a in m["artifacts"] if a["role"] == "model"), None)


def latencies(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every latency the conversion measured or estimated, with where it comes from."""
    out = []
    budget = m.get("budget") or {}
    chosen = next((c for c in budget.get("candidates", []) if c.get("name") == (budget.get("chosen") or {}).get("name")
                   and c.get("litert_p50_ms") is not None), None)
    if chosen is not None:
        out.append({"ms": chosen["litert_p50_ms"], "source": "LiteRT p50 on this host (accuracy budget's search)"})
    after = ((m.get("extras") or {}).get("optimize") or {}).get("after") or {}
    if after.get("litert_p50_ms") is not None:
        out.append({"ms": after["litert_p50_ms"], "source": "LiteRT p50 on this host (optimization measure)"})
    vela = (m.get("extras") or {}).get("vela") or {}
    if vela.get("inference_seconds") is not None:
        out.append({"ms": vela["inference_seconds"] * 1000.0, "source": f"Vela's estimate ({vela.get('accelerator')})"})
    return out


def summary(m: Mapping[str, Any], validation: Mapping[str, Any] | None) -> dict[str, Any]:
    flash, ram = _target_limits(m["target"]["name"])
    extras = m.get("extras") or {}
    tflm, vela = extras.get("tflm") or {}, extras.get("vela") or {}
    meters = [meter(".tflite bytes against the target's flash", _model_bytes(m), flash, "model-bytes")]
    if tflm.get("arena_bytes") is not None:
        arena = (tflm.get("firmware") or {}).get("tensor_arena_size") or tflm["arena_bytes"]
        meters.append(meter("tensor arena (with margin) against the target's RAM", arena, ram, "arena-bytes"))
    if vela.get("sram_bytes") is not None:
        meters.append(meter("Vela SRAM against the target's RAM", vela["sram_bytes"], ram, "vela-sram-bytes"))
    verdict = None
    if validation is not None:
        verdict = {"passed": bool(validation.get("passed")), "failures": validation.get("failures") or [],
                   "samples": validation.get("samples"), "runtime": validation.get("runtime"),
                   "data": validation.get("data"), "max_drop_pp": validation.get("max_drop_pp"),
                   "budget": (validation.get("budget") or {}).get("measured")}
    budget = m.get("budget")
    return {"meters": meters, "latencies": latencies(m), "verdict": verdict,
            "budget": None if not budget else {"met": budget.get("budget_met"), "limits": budget.get("budget"),
                                               "chosen": (budget.get("chosen") or {}).get("name")}}


def _confusion(conf: Mapping[str, Any] | None, labels: Sequence[str] | None) -> dict[str, Any] | None:
    """The matrix with row/column names and per-class accuracy; cell shades as fractions of the row."""
    if not conf or not (conf.get("matrix") or conf.get("per_class")):
        return None
    matrix = conf.get("matrix")
    per_class = conf.get("per_class") or [[sum(r), r[i]] for i, r in enumerate(matrix or [])]
    names = list(labels or [])[:len(per_class)]
    names += [str(i) for i in range(len(names), len(per_class))]
    rows = []
    for i, (total, correct) in enumerate(per_class):
        cells = None
        if matrix is not None:
            cells = [{"n": n, "shade": n / total if total else 0.0, "diag": i == j} for j, n in enumerate(matrix[i])]
        rows.append({"name": names[i], "cells": cells, "total": total, "accuracy": correct / total if total else None})
    return {"names": names, "rows": rows, "output": conf.get("output"), "matrix": matrix is not None}


def validation(v: Mapping[str, Any] | None, labels: Sequence[str] | None) -> dict[str, Any] | None:
    if v is None:
        return None
    metrics = [{"label": label, "value": value(v, key), "fmt": fmt, "interval": interval(v, key), "key": key}
               for key, label, fmt in _METRICS if value(v, key) is not None]
    slices = (v.get("intervals") or {}).get("worst_slice_sqnr_db") or {}
    outputs = [{**o, "interval": interval(slices, o.get("name", ""))} for o in v.get("outputs") or []]
    return {"raw": v, "metrics": metrics, "confidence": v.get("confidence") if v.get("intervals") else None,
            "task_interval": interval(v, "task_metric_drop_pp"), "outputs": outputs,
            "confusion": _confusion(v.get("confusion"), labels),
            "task": v.get("task_metric"), "runtimes": v.get("runtimes") or {}, "notes": v.get("notes") or []}


def quantization(m: Mapping[str, Any], sensitivity: Mapping[str, Any] | None,
                 tensors: Mapping[str, Any]) -> dict[str, Any]:
    budget = m.get("budget")
    chart = None
    if sensitivity and sensitivity.get("rows"):
        from edgepack.report.figures import sensitivity_svg

        chosen = (budget or {}).get("chosen") or {}
        chart = sensitivity_svg(sensitivity["rows"], f"per-op int8 error; chosen: {chosen.get('name', '?')}")
    cands = []
    for c in (budget or {}).get("candidates", []):
        sq = [x for x in ((c.get("metric") or {}).get("sqnr_db") or {}).values() if x is not None]
        agree = [x for x in ((c.get("metric") or {}).get("agreement") or {}).values() if x is not None]
        cands.append({**c, "worst_sqnr": min(sq) if sq else math.inf, "agreement": min(agree) if agree else None,
                      "litert_p50_ms": c.get("litert_p50_ms")})
    return {"q": m["quantization"], "budget": budget, "candidates": cands, "sensitivity_svg": chart,
            "sensitivity_rows": (sensitivity or {}).get("rows") or [], "tensors": tensors}


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (dict, list))]
    return cols


def optimization(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each optimization's settings and its per-layer records (pruning, sparsity, clustering, low rank,
    QAT), and the before/after totals."""
    opt = (m.get("extras") or {}).get("optimize") or {}
    out = []
    totals = [k for k in ("before", "after", "reduction") if isinstance(opt.get(k), Mapping)]
    if totals:
        keys = [k for k in opt[totals[0]]]
        out.append({"name": "totals", "settings": {}, "columns": ["", *totals],
                    "rows": [[k, *[opt[t].get(k) for t in totals]] for k in keys]})
    for name, sec in opt.items():
        if name in totals or not isinstance(sec, Mapping):
            continue
        layers = [r for r in sec.get("layers") or [] if isinstance(r, Mapping)]
        cols = _columns(layers)
        nested = {k: v for k, v in sec.items() if isinstance(v, dict)}
        if isinstance(sec.get("history"), Mapping):  # QAT's own fine-tuning record sits at the top
            nested = {"fine-tuning": dict(sec), **nested}
        out.append({"name": name, "settings": {k: v for k, v in sec.items() if not isinstance(v, (dict, list))},
                    "nested": {k: {kk: vv for kk, vv in d.items() if kk != "history"} for k, d in nested.items()},
                    "curves": _curves(name, nested), "columns": cols, "rows": [[r.get(c) for c in cols] for r in layers]})
    return out


def _curves(name: str, nested: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """A figure of every fine-tuning record's per-epoch history (drawn only when there is one)."""
    out = []
    for key, d in nested.items():
        hist = d.get("history")
        if isinstance(hist, Mapping) and any(isinstance(v, list) and v for v in hist.values()):
            from edgepack.report.figures import curves_png, data_uri

            series = {k: [float(x) for x in v] for k, v in hist.items() if isinstance(v, list)}
            title = f"{name}: {key}, per epoch"
            out.append({"title": title, "uri": data_uri(curves_png(series, title), "image/png")})
    return out


def io(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{**t, "direction": d} for d in ("inputs", "outputs") for t in m[d]]


def mcu(m: Mapping[str, Any]) -> dict[str, Any] | None:
    return (m.get("extras") or {}).get("tflm")


def provenance(m: Mapping[str, Any]) -> dict[str, Any]:
    import json

    request = m.get("request")
    return {"versions": m.get("versions") or {}, "created": m.get("created"),
            "request": json.dumps(request, indent=2) if request else None,
            "stages": m.get("stages") or [], "artifacts": m.get("artifacts") or []}
