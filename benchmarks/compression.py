"""Every compression technique on the same models: one table, one size-vs-accuracy plot.

Three Keras 3 models trained on scikit-learn's bundled digits (nothing downloaded): the digits CNN
(32/64 filters), the MobileNet-style net (depthwise, BatchNorm, ReLU6) and a wider CNN built here
(64/128/256 filters, a 256-unit Dense: ~0.5 M parameters). Each goes through ``edgepack convert`` as
float32, int8 PTQ, ``--prune channels:0.5``, ``--prune sparsity:0.5``, ``--cluster 16``, ``--cluster 16
--qat`` (cluster-preserving QAT), ``--low-rank 0.9``, ``--low-rank 0.75`` and one combination (``--low-rank 0.9 --prune
sparsity:0.5 --cluster 16 --qat``: factorize, then tfmot's collaborative sparsity-preserving clustering
and PCQAT). Every optimized row is int8 and fine-tuned on the training folds with labels.

Accuracy is k-fold (the data is small: 1,797 digits): each fold trains the models on the other folds,
calibrates and fine-tunes on them, and LiteRT scores the .tflite on the held-out fold; the table sums
the correct answers over all folds. Parameters, MACs, .tflite and zip bytes are fold 0's; LiteRT p50
is the best of interleaved rounds on fold 0's models.

Run: ``python benchmarks/compression.py [--workdir build/bench-compression] [--folds 3] [--plot docs/compression.svg]``
(``--plot-only`` redraws the table and plot from ``results.json``).
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
if __package__ in (None, ""):  # run as a script: the repository root holds the examples package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.pruning import mobilenet_style, row, stable_p50, tflite_accuracy  # noqa: E402
from examples.digits_demo import digits_cnn  # noqa: E402

TECHNIQUES: dict[str, dict] = {
    "float32": {"quantize": "none"},
    "int8 (PTQ)": {},
    "channels:0.5": {"prune": "channels:0.5"},
    "sparsity:0.5": {"prune": "sparsity:0.5"},
    "cluster 16": {"cluster": 16},
    "cluster 16 + QAT": {"cluster": 16, "qat": True},
    "low-rank 0.9": {"low_rank": "0.9"},
    "low-rank 0.75": {"low_rank": "0.75"},
    "low-rank + sparsity + cluster + QAT": {"low_rank": "0.9", "prune": "sparsity:0.5", "cluster": 16, "qat": True},
}


def wide_cnn(seed: int):
    """The larger model: a wider digits CNN (~0.5 M parameters), 3×3 convs and a 256-unit Dense."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        L.Conv2D(64, 3, padding="same", activation="relu"),
        L.Conv2D(128, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(256, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(256, activation="relu"),
        L.Dense(10, name="logits"),
    ], name="wide_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


MODELS = {"digits CNN": lambda s: digits_cnn(s, filters=(32, 64)), "MobileNet-style": mobilenet_style,
          "wide CNN": wide_cnn}


def run_one(src: Path, out: Path, extra: dict, calib: Path, train: Path, epochs: int, resume: bool = False) -> dict:
    from edgepack import api
    from edgepack.formats.detect import load_model
    from edgepack.optimize.measure import count_macs, zip_size
    from edgepack.packaging.manifest import read_manifest

    start = time.perf_counter()
    kw = dict(extra)
    if kw.get("quantize") != "none":
        kw["calibration"] = calib
    if any(k in kw for k in ("prune", "cluster", "low_rank", "qat")):
        kw.update(train_data=train, epochs=epochs)
    if resume and (out / "manifest.json").is_file():  # a finished bundle of an interrupted run
        manifest = read_manifest(out)
    else:
        manifest = api.convert(model=src, output=out, force=True, **kw).manifest
    blob = (out / "model.tflite").read_bytes()
    opt = manifest.extras.get("optimize", {})
    after = opt.get("after")
    if after is None:
        m = load_model(src).model
        after = {"params": int(m.count_params()), "macs": count_macs(m)}
    r = {"params": after["params"], "macs": after["macs"], "bytes": len(blob), "zip": zip_size(blob),
         "seconds": round(time.perf_counter() - start, 1)}
    lr = opt.get("low_rank")
    if lr:  # MACs of the Dense and 1×1 layers, before and after factorization
        pw = [la for la in lr["layers"] if la["kind"] in ("dense", "conv1x1")]
        r["dense_1x1_macs"] = [sum(la["macs_before"] for la in pw), sum(la["macs_after"] for la in pw)]
        r["factorized"] = [f"{la['name']} {la['rank_before']}->{la['rank_after']}" for la in lr["layers"]
                           if la["factorized"]]
    if "cluster" in opt:
        r["clusters_after"] = max(la["clusters_after"] for la in opt["cluster"]["layers"])
    r["blob"] = blob
    return r


def run(w: Path, folds: int, epochs: int, finetune_epochs: int, seed: int, only: list[str] | None,
        resume: bool = False) -> dict:
    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    digits = load_digits()
    x = (digits.images.astype("float32") / 16.0)[..., None]
    y = digits.target.astype("int64")
    techniques = {k: v for k, v in TECHNIQUES.items() if not only or k in only}
    results: dict = {"folds": folds, "fold_n": [], "models": {m: {t: {"fold_correct": []} for t in techniques}
                                                               for m in MODELS}}
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
        f = w / f"fold{k}"
        f.mkdir(parents=True, exist_ok=True)
        calib, train = f / "calibration.npy", f / "train.npz"
        np.save(calib, x[tr], allow_pickle=False)
        np.savez(train, x=x[tr], y=y[tr])
        results["fold_n"].append(len(te))
        for name, build in MODELS.items():
            src = f / (name.replace(" ", "_") + ".keras")
            if not (resume and src.is_file()):
                model = build(seed + k)
                model.fit(x[tr], y[tr], epochs=epochs, batch_size=32, verbose=0)
                model.save(src)
                keras.backend.clear_session()
            fold_runs = {}
            for label, extra in techniques.items():
                out = f / f"{src.stem}__{label.replace(' ', '_').replace(':', '_').replace('+', '')}"
                r = run_one(src, out, extra, calib, train, finetune_epochs, resume)
                acc = tflite_accuracy(out / "model.tflite", x[te], y[te])
                cell = results["models"][name][label]
                cell["fold_correct"].append(round(acc * len(te) / 100))
                cell.setdefault("fold_acc", []).append(round(acc, 3))
                if k == 0:
                    fold_runs[label] = r
                    cell.update({kk: v for kk, v in r.items() if kk != "blob"})
                print(f"fold {k + 1}/{folds} {name} / {label}: {acc:.2f} % ({r['seconds']} s, zip {r['zip']})",
                      flush=True)
            if k == 0:
                stable_p50(fold_runs, rounds=5, runs=100)
                for label, r in fold_runs.items():
                    results["models"][name][label]["p50_ms"] = r["p50_ms"]
            (w / "results.json").write_text(json.dumps(results, indent=2, default=float))
        results["folds_done"] = k + 1
        (w / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def accuracy(results: dict, cell: dict) -> float:
    """Correct answers over the folds this cell completed, in %."""
    done = cell["fold_correct"]
    if not done:
        return float("nan")
    return sum(done) / sum(results["fold_n"][:len(done)]) * 100


def table(results: dict) -> str:
    done = results.get("folds_done", 0)
    n = sum(results["fold_n"][:max(done, 1)])
    lines = [f"k-fold accuracy: {done} of {results['folds']} folds done ({n} digits; "
             f"one digit = {100 / n:.3f} points)", ""]
    widths = [36, 9, 10, 9, 8, 7, 8, 9, 8]
    for name, cells in results["models"].items():
        base = cells.get("int8 (PTQ)", {})
        fl = cells.get("float32", {})
        lines.append(row([name, "params", "MACs", "bytes", "zip", "zip/i8", "p50 us", "acc %", "vs f32"], widths))
        for label, c in cells.items():
            if "zip" not in c:
                continue
            acc = accuracy(results, c)
            d = acc - accuracy(results, fl) if fl.get("zip") else 0.0
            ratio = f"{c['zip'] / base['zip']:.2f}" if base.get("zip") else "-"
            lines.append(row([label, f"{c['params']:,}", f"{c['macs']:,}", f"{c['bytes']:,}", f"{c['zip']:,}", ratio,
                              f"{c.get('p50_ms', float('nan')) * 1000:.1f}", f"{acc:.2f}", f"{d:+.2f}"], widths))
            if "dense_1x1_macs" in c:
                b, a = c["dense_1x1_macs"]
                cut = f"{(1 - a / b) * 100:.0f}%" if b else "n/a"
                lines.append(f"{'':>38}low-rank: Dense/1x1 MACs {b:,} -> {a:,} ({cut} fewer); "
                             f"{', '.join(c.get('factorized', [])) or 'no layer factorized'}")
        lines.append("")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    done = results.get("folds_done", 0)
    out = ["| model | technique | params | MACs | .tflite bytes | zip bytes | zip / int8 | LiteRT p50 µs | "
           "accuracy | vs float | vs int8 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, cells in results["models"].items():
        base, fl = cells.get("int8 (PTQ)", {}), cells.get("float32", {})
        for label, c in cells.items():
            if "zip" not in c:
                continue
            acc = accuracy(results, c)
            folds = len(c["fold_correct"])
            note = f" ({folds} folds)" if folds != done else ""
            ratio = f"{c['zip'] / base['zip']:.2f}" if base.get("zip") else "-"
            out.append(f"| {name} | {label} | {c['params']:,} | {c['macs']:,} | {c['bytes']:,} | {c['zip']:,} | "
                       f"{ratio} | {c.get('p50_ms', float('nan')) * 1000:.1f} | {acc:.2f} %{note} | "
                       f"{acc - accuracy(results, fl):+.2f} | {acc - accuracy(results, base):+.2f} |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2))
    markers = "osD^v<>Px*"
    for ax, (name, cells) in zip(np.atleast_1d(axes), models.items()):
        for i, (label, c) in enumerate((lbl, c) for lbl, c in cells.items() if "zip" in c):
            ax.scatter(c["zip"] / 1024, accuracy(results, c), marker=markers[i % len(markers)], s=60, label=label)
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(name)
        ax.set_xlabel("zip bytes of the .tflite (KiB, log)")
        ax.set_ylabel("accuracy % (k-fold, LiteRT)")
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("edgepack compression: size vs accuracy, one point per technique")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("build/bench-compression"))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="training epochs of each model")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", help="run only this technique (repeatable; see TECHNIQUES)")
    ap.add_argument("--plot", type=Path, help="write the size-vs-accuracy plot here (.svg or .png)")
    ap.add_argument("--plot-only", action="store_true", help="table and plot from the workdir's results.json")
    ap.add_argument("--resume", action="store_true", help="reuse the models and bundles an interrupted run finished")
    args = ap.parse_args()
    w = args.workdir.resolve()  # absolute: every path handed to edgepack stays valid whatever the cwd
    w.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        results = json.loads((w / "results.json").read_text())
    else:
        from edgepack._native import quiet_tensorflow

        quiet_tensorflow(False)
        results = run(w, args.folds, args.epochs, args.finetune_epochs, args.seed, args.only, args.resume)
    print("\n" + table(results))
    print(markdown(results))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
