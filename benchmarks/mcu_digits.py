"""Microcontroller path on the digits CNN: edgepack convert for cortex-m4 and cortex-m55-ethos-u55
against the plain upstream tools (TFLiteConverter, then ethos-u-vela), and TFLM vs LiteRT.

    .venv/bin/python benchmarks/mcu_digits.py [--workdir build/bench-mcu] [--epochs 15]

Prints times, the measured arena, sizes, accuracies and Vela's report, and the ratios
edgepack / upstream (edgepack adds read-back, the TFLM arena measurement, the budget checks,
firmware sources and the manifest on top of the converter call).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prepare(workdir: Path, epochs: int) -> None:
    if (workdir / "digits.keras").is_file():
        return
    sys.path.insert(0, str(ROOT))  # the repository root holds the examples package
    from examples.digits_demo import prepare

    prepare(workdir, epochs, 0)


def _plain_convert(workdir: Path) -> float:
    """What a user would write by hand: TFLiteConverter, full int8, batch 1."""
    import keras
    import numpy as np
    import tensorflow as tf

    start = time.perf_counter()
    model = keras.saving.load_model(workdir / "digits.keras")
    calib = np.load(workdir / "calibration.npy")[:200]
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, verbose=False, input_signature=[tf.TensorSpec((1, 8, 8, 1), tf.float32)])
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return _finish(conv, calib, workdir, start)


def _finish(conv, calib, workdir: Path, start: float) -> float:
    import tensorflow as tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    (workdir / "plain_int8.tflite").write_bytes(conv.convert())
    return time.perf_counter() - start


def _plain_vela(workdir: Path) -> float:
    from ethosu.vela import vela

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        vela.main([str(workdir / "plain_int8.tflite"), "--output-dir", tmp, "--accelerator-config", "ethos-u55-128",
                   "--config", "Arm/vela.ini", "--system-config", "Ethos_U55_High_End_Embedded",
                   "--memory-mode", "Shared_Sram"])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-mcu")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgepack import api
    from edgepack._native import capture_native_output, quiet_tensorflow

    w = args.workdir
    quiet_tensorflow(False)
    _prepare(w, args.epochs)
    with capture_native_output():
        t_plain = _plain_convert(w)
    results = {}
    for target in ("cortex-m4", "cortex-m55-ethos-u55"):
        start = time.perf_counter()
        res = api.convert(model=w / "digits.keras", output=w / target, calibration=w / "calibration.npy",
                          labels=w / "labels.txt", target=target, force=True)
        results[target] = (time.perf_counter() - start, res)
    with capture_native_output():
        t_vela = _plain_vela(w)
    t_m4, m4 = results["cortex-m4"]
    report = api.validate(bundle=w / "cortex-m4", data=w / "heldout.npz", check=False)
    tflm = report.runtimes["tflm"]
    arena = m4.manifest.extras["tflm"]
    print(f"cortex-m4: model {m4.manifest.artifact('model').bytes} bytes (flash), arena measured "
          f"{arena['arena_bytes']} bytes (firmware {arena['firmware']['tensor_arena_size']} with "
          f"{arena['arena_margin_percent']}% margin), ops {m4.manifest.ops}")
    print(f"accuracy: reference {report.accuracy_reference:.4f}  LiteRT {report.accuracy_bundle:.4f}  "
          f"TFLM {tflm['accuracy']:.4f}  max |TFLM-LiteRT| {tflm['max_abs_diff_vs_litert']:.4g} "
          f"({tflm['max_diff_steps_vs_litert']} steps), top-1 agreement {tflm['top1_agreement_vs_litert']:.4f}")
    t_u55, u55 = results["cortex-m55-ethos-u55"]
    v = u55.manifest.extras["vela"]
    print(f"ethos-u55-128: SRAM {v['sram_bytes']} B, flash {v['flash_bytes']} B, NPU ops {v['npu_ops']}, "
          f"CPU ops {v['cpu_ops']}, cycles {v['cycles_total']} ({v['inference_seconds'] * 1e6:.1f} us/inference)")
    print(f"time: plain TFLiteConverter {t_plain:.2f}s, edgepack cortex-m4 {t_m4:.2f}s "
          f"(ratio {t_m4 / t_plain:.2f}x, incl. arena+checks+firmware+manifest)")
    print(f"time: plain converter+vela {t_plain + t_vela:.2f}s, edgepack cortex-m55-ethos-u55 {t_u55:.2f}s "
          f"(ratio {t_u55 / (t_plain + t_vela):.2f}x)")


if __name__ == "__main__":
    main()
