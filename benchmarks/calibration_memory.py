"""Peak memory of a calibration pass over N and 10×N samples: edgepack's streamed data layer against
loading the data whole (``np.load`` / a list of Pillow images, what a plain TFLiteConverter script does).

Each pass runs in a fresh subprocess and reports its peak RSS (``VmHWM``). The pass is what
``edgepack convert`` does with calibration data: open and check, select (all samples), read every
sample once for statistics and the hash, then yield every sample again as the converter's
representative dataset does.

    .venv/bin/python benchmarks/calibration_memory.py            # N = 1000 arrays, 300 images
    .venv/bin/python benchmarks/calibration_memory.py --n 200 --images 60   # quick

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
from pathlib import Path

import numpy as np

SHAPE = (96, 96, 3)
SPEC = "resize=96x96,mean=127.5,std=127.5"


def make_npy(path: Path, n: int) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *SHAPE))
    rng = np.random.default_rng(0)
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        arr[start:stop] = rng.random((stop - start, *SHAPE), dtype=np.float32)
    arr.flush()
    del arr


def make_images(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")


def _peak_rss_mib() -> float:
    """VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's peak over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, path: str) -> dict:
    """One pass, in this (fresh) process; returns peak RSS in MiB."""
    start = time.perf_counter()
    if kind.startswith("edgepack"):
        from edgepack.calibration import InputSpec
        from edgepack.calibration.calibrate import calibration_set

        spec = SPEC if kind == "edgepack-images" else None
        cal = calibration_set(Path(path), [InputSpec("image", SHAPE)], count=10**9, seed=0, spec=spec)
        n = sum(1 for _ in cal.data.samples({"image": "float32"}))
    elif kind == "plain-npy":
        x = np.load(path)  # what a plain converter script does
        n = sum(1 for i in range(len(x)) if x[i:i + 1].size)
    else:
        from PIL import Image

        files = sorted(Path(path).glob("*.jpg"))
        x = np.stack([(np.asarray(Image.open(f).convert("RGB").resize((96, 96)), np.float32) - 127.5) / 127.5
                      for f in files])
        n = sum(1 for i in range(len(x)) if x[i:i + 1].size)
    peak = _peak_rss_mib()
    return {"samples": n, "peak_mib": round(peak, 1), "seconds": round(time.perf_counter() - start, 2)}


def run(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="array samples at 1x (96x96x3 float32)")
    ap.add_argument("--images", type=int, default=300, help="JPEG files at 1x (128x128, resized to 96x96)")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--skip-plain", action="store_true", help="only measure edgepack")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
        d = Path(tmp)
        print(f"writing data: {args.n} and {10 * args.n} arrays {SHAPE}, {args.images} and {10 * args.images} JPEGs")
        make_npy(d / "n.npy", args.n)
        make_npy(d / "10n.npy", 10 * args.n)
        make_images(d / "img_n", args.images)
        make_images(d / "img_10n", 10 * args.images)
        rows = [("edgepack-npy", "n.npy", "10n.npy"), ("edgepack-images", "img_n", "img_10n")]
        if not args.skip_plain:
            rows += [("plain-npy", "n.npy", "10n.npy"), ("plain-images", "img_n", "img_10n")]
        print(f"{'pass':<16} {'samples 1x':>10} {'peak 1x':>10} {'samples 10x':>11} {'peak 10x':>10} {'ratio':>7}"
              f" {'time 10x':>9}")
        for kind, small, big in rows:
            a, b = run(kind, d / small), run(kind, d / big)
            ratio = b["peak_mib"] / a["peak_mib"]
            print(f"{kind:<16} {a['samples']:>10} {a['peak_mib']:>8.1f}Mi {b['samples']:>11} {b['peak_mib']:>8.1f}Mi "
                  f"{ratio:>6.2f}x {b['seconds']:>8.1f}s")


if __name__ == "__main__":
    main()
