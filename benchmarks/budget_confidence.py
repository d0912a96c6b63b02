"""Budgets judged with confidence bounds (issue 21 item 1), measured on a trained small classifier
whose int8 agreement with its float model is below the budget.

A dense classifier (32 inputs, 600 classes, trained on a noisy linear teacher: small decision margins)
is converted to full int8 and its true agreement measured on 2,000 other samples; then random
held-out sets of 40 (the old default on 200 calibration samples) and 100 (the new one) samples are
drawn from those 2,000 and judged by the figure alone (the old rule) and by the Wilson lower bound
(the new one). Then ``edgepack convert --min-agreement 0.96`` on the default held-out part, and with
``--eval-data`` of 1,000 of the samples, checked on the other 1,000.

    python benchmarks/budget_confidence.py [--workdir build/bench-confidence]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES, FEATURES = 600, 32


def build(folder: Path) -> None:
    import numpy as np
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(FEATURES, CLASSES))

    def data(n: int):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        return x, (x @ teacher + rng.normal(size=(n, CLASSES)) * 3).argmax(1)

    x, y = data(6000)
    m = keras.Sequential([keras.Input((FEATURES,), name="x"), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(CLASSES, name="logits")])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, epochs=8, batch_size=64, verbose=0)
    m.save(folder / "cls.h5")
    np.save(folder / "calib200.npy", data(200)[0])
    xt, yt = data(2000)
    np.savez(folder / "eval1000.npz", x=xt[:1000], y=yt[:1000])
    np.savez(folder / "check1000.npz", x=xt[1000:], y=yt[1000:])


def edgepack(*args: str) -> subprocess.CompletedProcess:
    print("$ edgepack " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True)




def draws(folder: Path) -> None:
    import numpy as np
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.validation.intervals import wilson_interval

    x = np.concatenate([np.load(folder / p)["x"] for p in ("eval1000.npz", "check1000.npz")])
    ref = keras.models.load_model(folder / "cls.h5").predict(x, verbose=0).argmax(1)
    it = Interpreter(model_path=str(folder / "int8" / "model.tflite"))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for row in x:
        s, z = i["quantization"]
        it.set_tensor(i["index"], np.clip(np.round(row[None] / s + z), -128, 127).astype(np.int8))
        it.invoke()
        out.append(it.get_tensor(o["index"]).argmax())
    agree = ref == np.array(out)
    print(f"full int8, top-1 agreement on 2000 samples: {wilson_interval(int(agree.sum()), agree.size).format()}")
    rng = np.random.default_rng(0)
    for n in (40, 100):
        ks = [int(agree[rng.choice(agree.size, n, replace=False)].sum()) for _ in range(2000)]
        old = np.mean([k / n >= 0.96 for k in ks])
        new = np.mean([wilson_interval(k, n).low >= 0.96 for k in ks])
        print(f"  {n} held-out samples, 2000 draws: 'met' (>= 0.96) by the figure {old:.3f}, by the lower bound {new:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-confidence")
    w = ap.parse_args().workdir
    w.mkdir(parents=True, exist_ok=True)
    if not (w / "cls.h5").is_file():
        build(w)
    edgepack("convert", str(w / "cls.h5"), "-o", str(w / "int8"), "--calibration", str(w / "calib200.npy"), "--force")
    draws(w)
    for name, extra in (("budget_default", []), ("budget_eval1000", ["--eval-data", str(w / "eval1000.npz")])):
        r = edgepack("convert", str(w / "cls.h5"), "-o", str(w / name), "--calibration", str(w / "calib200.npy"),
                     "--min-agreement", "0.96", "--force", *extra)
        print(f"  exit {r.returncode}")
        for line in (r.stdout + r.stderr).splitlines():
            if line.startswith(("budget", "  judged", "error", "WARNING: the evaluation")):
                print("  " + line)
        if r.returncode == 0:
            v = edgepack("validate", str(w / name), "--data", str(w / "check1000.npz"), "--json")
            rep = json.loads(v.stdout)
            print(f"  on the other 1000 samples: agreement {rep['top1_agreement']:.3f} "
                  f"[{rep['intervals']['top1_agreement']['low']:.3f}, {rep['intervals']['top1_agreement']['high']:.3f}]")


if __name__ == "__main__":
    main()
