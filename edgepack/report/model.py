"""The model's own tables, read from the bundle's ``.tflite`` flatbuffer (parsed, never run): ops with
their MACs, weight bytes and precision, the largest tensors, and every tensor's quantization."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgepack.tflite_model import Tensor, TfliteModel

_ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1,
               "int16": 2, "int8": 1, "float64": 8, "uint32": 4, "uint16": 2, "int4": 0.5, "complex64": 8}
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int4": (-8, 7)}
MAX_TENSOR_ROWS = 3000  # the per-tensor table of the largest models stops here (the page stays small)
LARGEST = 15


def tensor_bytes(t: Tensor) -> int:
    return int(math.prod(max(d, 1) for d in t.shape) * _ITEM_BYTES.get(t.dtype, 4))


def _macs(op: str, ins: list[Tensor | None], out: Tensor | None) -> int | None:
    """Multiply-accumulates of the ops that do nearly all of a model's arithmetic; None for the rest."""
    if out is None or len(ins) < 2 or ins[1] is None:
        return None
    w, n_out = ins[1].shape, math.prod(max(d, 1) for d in out.shape)
    if op == "CONV_2D" and len(w) == 4:
        return n_out * w[1] * w[2] * w[3]
    if op == "DEPTHWISE_CONV_2D" and len(w) == 4:
        return n_out * w[1] * w[2]
    if op == "FULLY_CONNECTED" and len(w) == 2:
        return n_out * w[1]
    if op == "BATCH_MATMUL" and ins[0] is not None and ins[0].shape:
        return n_out * ins[0].shape[-1]
    return None


def ops_table(info: TfliteModel) -> list[dict[str, Any]]:
    """Per op type: count, MACs, weight bytes, and the precisions its outputs run in."""
    rows: dict[str, dict[str, Any]] = {}

    def tensor(i: int) -> Tensor | None:
        return info.tensors[i] if 0 <= i < len(info.tensors) else None

    for op, (ins, outs) in zip(info.ops, info.op_io or [((), ())] * len(info.ops)):
        row = rows.setdefault(op, {"op": op, "count": 0, "macs": None, "weight_bytes": 0, "precision": set()})
        row["count"] += 1
        in_t = [tensor(i) for i in ins]
        out_t = tensor(outs[0]) if outs else None
        macs = _macs(op, in_t, out_t)
        if macs is not None:
            row["macs"] = (row["macs"] or 0) + macs
        row["weight_bytes"] += sum(tensor_bytes(t) for t in in_t if t is not None and t.constant)
        if out_t is not None:
            row["precision"].add(out_t.dtype)
    out = sorted(rows.values(), key=lambda r: (-(r["macs"] or 0), -r["count"], r["op"]))
    for r in out:
        r["precision"] = ", ".join(sorted(r["precision"])) or "–"
    return out


def largest_tensors(info: TfliteModel, n: int = LARGEST) -> list[dict[str, Any]]:
    ranked = sorted(info.tensors, key=lambda t: -tensor_bytes(t))[:n]
    return [{"index": t.index, "name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": tensor_bytes(t),
             "kind": "weights" if t.constant else "activation"} for t in ranked]


def _scale_text(t: Tensor) -> str:
    if not t.scales:
        return "–"
    if len(t.scales) == 1:
        return f"{t.scales[0]:.4g}"
    return f"{len(t.scales)} per-channel, {min(t.scales):.3g} … {max(t.scales):.3g}"


def _range(t: Tensor) -> list[float] | None:
    if t.scale is None or t.zero_point is None or t.dtype not in _QRANGE:
        return None
    lo, hi = _QRANGE[t.dtype]
    return [(lo - t.zero_point) * t.scale, (hi - t.zero_point) * t.scale]


def tensor_table(info: TfliteModel, budget: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every activation tensor (and the quantized weights): dtype, scale, zero point, the float range
    its int grid covers, and a note: range chosen by the budget's search, or kept float and why."""
    chosen = (budget or {}).get("chosen") or {}
    clipped = chosen.get("ranges") or {}
    methods = chosen.get("range_methods") or {}
    why = chosen.get("why") or {}
    kept = set(chosen.get("float_ops") or []) | set(chosen.get("int16_ops") or [])
    producer = {o: op for op, (_, outs) in zip(info.ops, info.op_io) for o in outs}
    rows = []
    for t in info.tensors:
        if t.constant and not t.scales:
            continue
        note = ""
        if t.name in kept:
            note = "kept out of int8" + (f": {why[t.name]}" if t.name in why else "")
        elif t.name in clipped:
            note = f"range {methods.get(t.name, 'chosen by the budget')}: {clipped[t.name]}"
        rows.append({"index": t.index, "name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                     "op": producer.get(t.index, "input" if t.index in info.inputs else "–"),
                     "kind": "weights" if t.constant else "activation", "scale": _scale_text(t),
                     "zero_point": t.zero_point, "range": _range(t), "note": note})
    float_acts = sum(1 for r in rows if r["kind"] == "activation" and r["dtype"].startswith("float"))
    table = [[r["index"], r["name"], r["op"], r["dtype"], _shape(r["shape"]), r["scale"], r["zero_point"],
              "–" if r["range"] is None else f"{r['range'][0]:.4g} … {r['range'][1]:.4g}", r["note"]]
             for r in rows[:MAX_TENSOR_ROWS]]
    return {"rows": rows[:MAX_TENSOR_ROWS], "table": table, "total": len(rows),
            "cut": max(0, len(rows) - MAX_TENSOR_ROWS), "float_activations": float_acts}


def _shape(shape: list[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def model_rows(info: TfliteModel) -> dict[str, Any]:
    """The ops and largest-tensor tables as rows for the page."""
    return {"op_rows": [[r["op"], r["count"], r["macs"], r["weight_bytes"], r["precision"]] for r in ops_table(info)],
            "largest_rows": [[r["index"], r["name"], r["kind"], r["dtype"], _shape(r["shape"]), r["bytes"]]
                             for r in largest_tensors(info)],
            "op_count": len(info.ops), "tensors": len(info.tensors)}
