"""Structured pruning, sparsity and QAT: what each buys on LiteRT, against plain tfmot pruning.

1. The digits CNN (Keras 3, sklearn's bundled digits; nothing downloaded): ``--prune channels:R``
   for several R, fine-tuned, full-int8 → params, MACs, .tflite bytes, LiteRT p50, test accuracy.
   tfmot's own magnitude pruning (``--prune sparsity:0.5``) is the upstream baseline: same bytes,
   same latency, only the zip shrinks.
2. PTQ vs QAT int8 accuracy on the same digits model, and on it after ``--prune channels:0.9``.
3. A larger conv net (keras.applications MobileNet, weights=None, random init) for timing only.

Run: ``python benchmarks/pruning.py [--workdir build/bench-pruning] [--epochs 40] [--qat-only]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits_demo import digits_cnn, digits_split  # noqa: E402  (the demo's data split and CNN)


def digits_data(workdir: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_tr, x_te, y_tr, y_te = digits_split(seed)
    np.save(workdir / "calibration.npy", x_tr, allow_pickle=False)
    np.savez(workdir / "train.npz", x=x_tr, y=y_tr)
    return x_tr, y_tr, x_te, y_te


def train_digits(workdir: Path, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Path:
    model = digits_cnn(seed, filters=(32, 64))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    path = workdir / "digits.keras"
    model.save(path)
    return path


def tflite_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path), num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
    interp.allocate_tensors()
    scale, zp = inp["quantization"]
    xq = x if inp["dtype"] == np.float32 else np.clip(np.round(x / scale) + zp, -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], xq)
    interp.invoke()
    return float(np.mean(interp.get_tensor(out["index"]).argmax(-1) == y)) * 100


def convert(model: Path, out: Path, **kw) -> dict:
    from edgepack import api
    from edgepack.converter.measure import count_macs

    start = time.perf_counter()
    res = api.convert(model=model, output=out, force=True, **kw)
    blob = (out / "model.tflite").read_bytes()
    opt = res.manifest.extras.get("optimize", {})
    after = opt.get("after")
    if after is None:  # not optimized: count on the source model
        from edgepack.converter.load import load_model

        src = load_model(model).model
        after = {"params": src.count_params(), "macs": count_macs(src)}
    return {"params": after["params"], "macs": after["macs"], "bytes": len(blob),
            "zip": opt.get("after", {}).get("zip_bytes"), "blob": blob,
            "seconds": time.perf_counter() - start, "manifest": opt}


def stable_p50(results: dict[str, dict], rounds: int = 7, runs: int = 100) -> None:
    """Interleaved rounds, best p50 per model: the machine is shared, so one p50 alone is noisy."""
    from edgepack.converter.measure import litert_p50_ms

    best = {k: float("inf") for k in results}
    for _ in range(rounds):
        for k, r in results.items():
            best[k] = min(best[k], litert_p50_ms(r["blob"], runs=runs))
    for k, r in results.items():
        r["p50_ms"] = best[k]
        del r["blob"]


def row(cells: list, widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def digits_table(w: Path, model: Path, x_te, y_te, epochs: int) -> dict:
    from edgepack.converter.measure import zip_size

    results = {}
    runs = [("original (PTQ)", {})] + [(f"channels:{r}", {"prune": f"channels:{r}"}) for r in (0.25, 0.5, 0.75)] \
        + [("tfmot sparsity:0.5", {"prune": "sparsity:0.5"})]
    for label, extra in runs:
        out = w / label.replace(":", "_").replace(" ", "_")
        r = convert(model, out, calibration=w / "calibration.npy", train_data=w / "train.npz" if extra else None,
                    epochs=epochs, **extra)
        r["acc"] = tflite_accuracy(out / "model.tflite", x_te, y_te)
        r["zip"] = zip_size(r["blob"])
        results[label] = {k: v for k, v in r.items() if k != "manifest"}
    stable_p50(results)
    widths = [18, 8, 9, 7, 7, 9, 9, 9, 8]
    print(row(["digits (int8)", "params", "MACs", "bytes", "zip", "p50 us", "acc %", "MAC cut", "speedup"], widths))
    base = results["original (PTQ)"]
    for label, r in results.items():
        print(row([label, r["params"], r["macs"], r["bytes"], r["zip"], f"{r['p50_ms'] * 1000:.1f}",
                   f"{r['acc']:.2f}", f"{(1 - r['macs'] / base['macs']) * 100:.0f}%",
                   f"{base['p50_ms'] / r['p50_ms']:.2f}x"], widths))
    return results


def tflite_acc_of(model: Path, out: Path, x_te, y_te, **kw) -> float:
    convert(model, out, **kw)
    return tflite_accuracy(out / "model.tflite", x_te, y_te)


def qat_table(w: Path, model: Path, x_te, y_te, epochs: int, float_acc: float) -> dict:
    """Float vs full-int8 PTQ vs QAT (tfmot quantize_model + fine-tune, then the same int8 conversion).

    Two cases: the digits CNN as trained, and the same CNN after aggressive channel pruning
    (``channels:0.9``, fine-tuned), whose float reference is the pruned model converted without
    quantization (the seeded fine-tune is the same in all three runs).
    """
    calib, train = w / "calibration.npy", w / "train.npz"
    cases = {}
    ptq = tflite_acc_of(model, w / "qat_cnn_ptq", x_te, y_te, calibration=calib)
    qat = tflite_acc_of(model, w / "qat_cnn_qat", x_te, y_te, calibration=calib, train_data=train, qat=True,
                        epochs=epochs)
    cases["digits CNN"] = {"float": float_acc, "ptq": ptq, "qat": qat}
    pruned = {"calibration": calib, "train_data": train, "epochs": epochs, "prune": "channels:0.9"}
    cases["CNN channels:0.9"] = {
        "float": tflite_acc_of(model, w / "qat_p90_float", x_te, y_te, quantize="none", **pruned),
        "ptq": tflite_acc_of(model, w / "qat_p90_ptq", x_te, y_te, **pruned),
        "qat": tflite_acc_of(model, w / "qat_p90_qat", x_te, y_te, qat=True, **pruned)}
    widths = [18, 8, 16, 16]
    print("\n" + row(["PTQ vs QAT", "float %", "PTQ int8 %", "QAT int8 %"], widths)
          + f"   (test set: {len(y_te)} digits, one digit = {100 / len(y_te):.2f} points)")
    for label, c in cases.items():
        print(row([label, f"{c['float']:.2f}", f"{c['ptq']:.2f} ({c['ptq'] - c['float']:+.2f})",
                   f"{c['qat']:.2f} ({c['qat'] - c['float']:+.2f})"], widths))
    return cases


def mobilenet_table(w: Path) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.5, weights=None, classes=10)
    path = w / "mobilenet.keras"
    model.save(path)
    np.save(w / "mn_calib.npy", np.random.default_rng(0).random((100, 128, 128, 3), dtype=np.float32))
    out = {}
    for ratio in (0.0, 0.25, 0.5):
        extra = {"prune": f"channels:{ratio}"} if ratio else {}
        r = convert(path, w / f"mobilenet_{ratio}", calibration=w / "mn_calib.npy", **extra)
        out[f"channels:{ratio}" if ratio else "original"] = {k: v for k, v in r.items() if k != "manifest"}
    stable_p50(out, rounds=5, runs=30)
    widths = [24, 9, 11, 9, 9, 8]
    print("\n" + row(["MobileNet a=0.5 128px", "params", "MACs", "bytes", "p50 ms", "speedup"], widths))
    base = out["original"]
    for label, r in out.items():
        print(row([label, r["params"], r["macs"], r["bytes"], f"{r['p50_ms']:.2f}",
                   f"{base['p50_ms'] / r['p50_ms']:.2f}x"], widths))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("build/bench-pruning"))
    ap.add_argument("--epochs", type=int, default=40, help="training epochs of the digits CNN")
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-mobilenet", action="store_true")
    ap.add_argument("--qat-only", action="store_true", help="only the PTQ vs QAT section (implies no MobileNet)")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(False)
    x_tr, y_tr, x_te, y_te = digits_data(w, args.seed)
    model = train_digits(w, x_tr, y_tr, args.epochs, args.seed)
    import keras

    float_acc = float(np.mean(keras.saving.load_model(model).predict(x_te, verbose=0).argmax(-1) == y_te)) * 100
    print(f"digits CNN float accuracy: {float_acc:.2f}% on {len(y_te)} test digits\n")
    results = {"float_acc": float_acc}
    if not args.qat_only:
        results["digits"] = digits_table(w, model, x_te, y_te, args.finetune_epochs)
    results["qat"] = qat_table(w, model, x_te, y_te, args.finetune_epochs, float_acc)
    if not (args.skip_mobilenet or args.qat_only):
        results["mobilenet"] = mobilenet_table(w)
    (w / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
