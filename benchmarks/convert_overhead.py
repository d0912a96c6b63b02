"""Wall time of `edgepack convert` (full int8) against a plain TFLiteConverter script doing the same
int8 conversion with the same calibration samples. Each run is a fresh process (TensorFlow import
included on both sides); the median of --repeat runs is compared.

    python benchmarks/convert_overhead.py [--repeat 5] [--workdir build/bench]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAIN = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
model = keras.saving.load_model(sys.argv[1], compile=False)
calib = np.load(sys.argv[2])
idx = np.sort(np.random.default_rng(0).choice(len(calib), size=200, replace=False))
def rep():
    for i in idx:
        yield [calib[i:i + 1].astype("float32")]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = rep
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
open(sys.argv[3], "wb").write(conv.convert())
'''


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    args = ap.parse_args()
    w = args.workdir
    if not (w / "digits.keras").exists():
        sys.path.insert(0, str(ROOT))  # the repository root holds the examples package
        from examples.digits_demo import prepare

        prepare(w, epochs=10, seed=0)
    (w / "plain.py").write_text(PLAIN)
    edgepack_cmd = [sys.executable, "-m", "edgepack", "convert", str(w / "digits.keras"), "-o", str(w / "bundle"),
                    "--calibration", str(w / "calibration.npy"), "--calibration-samples", "200", "--force", "-q"]
    plain_cmd = [sys.executable, str(w / "plain.py"), str(w / "digits.keras"), str(w / "calibration.npy"),
                 str(w / "plain.tflite")]
    ep, pl = [], []
    for _ in range(args.repeat):  # interleaved, so drift on the machine hits both sides alike
        pl.append(timed(plain_cmd))
        ep.append(timed(edgepack_cmd))
    e, p = statistics.median(ep), statistics.median(pl)
    print(f"model: digits CNN (Keras 3), full int8, 200 calibration samples, {args.repeat} runs each")
    print(f"plain TFLiteConverter script : median {p:6.2f}s  (min {min(pl):.2f}s)")
    print(f"edgepack convert             : median {e:6.2f}s  (min {min(ep):.2f}s)")
    print(f"overhead ratio edgepack/plain: {e / p:.2f}x")
    sizes = (w / "bundle" / "model.tflite").stat().st_size, (w / "plain.tflite").stat().st_size
    print(f"model bytes: edgepack {sizes[0]}, plain {sizes[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
