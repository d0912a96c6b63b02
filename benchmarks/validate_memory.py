"""Peak memory of ``edgepack validate`` over N and 10×N labelled samples.

validate streams: each chunk of 64 samples goes through the bundle (LiteRT, in a child process)
and the reference model (Keras), and only running sums are kept. Each run is a fresh process that
reports its own peak RSS (``VmHWM``) and the interpreter child's (its ``VmHWM``, read before it exits).
The data is an uncompressed ``.npz`` (x, y) written chunk by chunk, so writing it needs no memory.

    .venv/bin/python benchmarks/validate_memory.py              # N = 2000 samples of 32x32x3
    .venv/bin/python benchmarks/validate_memory.py --n 500      # quick

Target: peak RSS at 10×N at most 1.2× the peak at N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SHAPE = (32, 32, 3)
CLASSES = 1000  # an ImageNet-sized head: per-sample outputs are what a non-streaming validate piles up


def make_npz(path: Path, n: int) -> None:
    """x (n, 32, 32, 3) float32 and y (n,) int64 in a stored (uncompressed) .npz, written in chunks."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, *SHAPE)})
            for start in range(0, n, 1024):
                f.write(rng.random((min(1024, n - start), *SHAPE), dtype=np.float32).tobytes())
        with zf.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, rng.integers(0, CLASSES, n))


def make_bundle(folder: Path) -> Path:
    """A small int8 CNN (Keras 3) and its bundle; the bundle records the model as its reference."""
    import keras

    from edgepack import api

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(SHAPE, name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, name="logits"),
    ])
    model.save(folder / "model.keras")
    np.save(folder / "calib.npy", np.random.default_rng(1).random((200, *SHAPE), dtype=np.float32))
    api.convert(model=folder / "model.keras", output=folder / "bundle", calibration=folder / "calib.npy", force=True)
    return folder / "bundle"


def _peak_rss_mib(status: str = "/proc/self/status") -> float:
    """VmHWM: a process image's own peak RSS (ru_maxrss of children carries the parent's over fork+exec)."""
    for line in Path(status).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(bundle: str, data: str) -> dict:
    """One validate run in this fresh process: its peak RSS and the interpreter child's, in MiB."""
    from edgepack import api
    from edgepack.runtimes.isolated import IsolatedRunner

    child_peaks = []
    close = IsolatedRunner.close

    def close_and_measure(self) -> None:  # the child's own VmHWM, read while it is still alive
        if self.proc is not None:
            child_peaks.append(_peak_rss_mib(f"/proc/{self.proc.pid}/status"))
        close(self)

    IsolatedRunner.close = close_and_measure
    start = time.perf_counter()
    report = api.validate(bundle=bundle, data=data, check=False)
    return {"samples": report.samples, "peak_mib": round(_peak_rss_mib(), 1),
            "runtime_child_mib": round(max(child_peaks), 1),
            "seconds": round(time.perf_counter() - start, 1), "agreement": report.top1_agreement}


def run(bundle: Path, data: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(bundle), str(data)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help=f"samples at 1x ({'x'.join(map(str, SHAPE))} float32)")
    ap.add_argument("--child", nargs=2, metavar=("BUNDLE", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
        d = Path(tmp)
        bundle = make_bundle(d)
        make_npz(d / "n.npz", args.n)
        make_npz(d / "10n.npz", 10 * args.n)
        sizes = [(d / f).stat().st_size / 2**20 for f in ("n.npz", "10n.npz")]
        a, b = run(bundle, d / "n.npz"), run(bundle, d / "10n.npz")
    print(f"validate, int8 CNN {SHAPE} on LiteRT vs its Keras reference; "
          f"data {sizes[0]:.0f} MiB and {sizes[1]:.0f} MiB")
    print(f"{'data':<5} {'samples':>8} {'peak RSS':>10} {'runtime child':>14} {'time':>7}")
    for name, r in (("1x", a), ("10x", b)):
        print(f"{name:<5} {r['samples']:>8} {r['peak_mib']:>8.1f}Mi {r['runtime_child_mib']:>12.1f}Mi "
              f"{r['seconds']:>6.1f}s")
    ratio = b["peak_mib"] / a["peak_mib"]
    child_ratio = b["runtime_child_mib"] / a["runtime_child_mib"]
    print(f"peak RSS ratio 10x/1x: {ratio:.3f} (runtime child {child_ratio:.3f}); goal <= 1.2: "
          f"{'met' if max(ratio, child_ratio) <= 1.2 else 'NOT met'}")
    return 0 if max(ratio, child_ratio) <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
