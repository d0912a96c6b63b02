"""Seeded fuzzing of edgepack's .tflite verifier and manifest reader, at more cases than the suite runs.

For every mutation of a small bundle's model (truncations, bit flips, clobbered offsets, random
runs) the reader must return or raise one EdgepackError. With ``--run``, each model the verifier
accepts is also run on LiteRT in a forked child, counting native crashes that got past it (in
``validate`` those would be contained by the isolated runner, and reported as one line).

With ``--recipes N`` / ``--reproduce N`` (2000 each by default) it also feeds hostile recipes to
``convert --recipe`` and hostile manifests to ``reproduce`` (tests/faults/fuzz_requests.py): a Lambda
model and a metric module that write a marker file when they run are named by every case; the
count of payload runs and of exceptions outside EdgepackError must both be 0.

    .venv/bin/python benchmarks/fuzz.py                      # 5000 .tflite + 2000 manifest + 2000 recipe + 2000 reproduce
    .venv/bin/python benchmarks/fuzz.py --tflite 20000 --run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.fuzz_requests import base_recipe, fuzz_recipes, fuzz_reproduce, make_payloads
from tests.faults.fuzzing import fuzz_manifest, fuzz_tflite, mutate_bytes


def make_bundles(folder: Path) -> dict[str, Path]:
    """The suite's tiny classifier as an int8 and a float16 bundle."""
    from edgepack import api
    from tests.conftest import INPUT_SHAPE, save_model

    model = save_model("keras3", folder / "model")
    np.save(folder / "calib.npy", np.random.default_rng(0).random((100, *INPUT_SHAPE), dtype=np.float32))
    out = {}
    for mode in ("int8", "float16"):
        out[mode] = folder / mode
        api.convert(model=model, output=out[mode], quantize=mode,
                    calibration=folder / "calib.npy" if mode == "int8" else None)
    return out


def run_accepted(data: bytes, seeds: range) -> Counter:
    """Run every verified mutation on LiteRT (allocate, invoke on zeros) in a forked child."""
    from edgepack.errors import EdgepackError
    from edgepack.tflite_model import read_tflite

    outcomes: Counter = Counter()
    for seed in seeds:
        buf = mutate_bytes(data, seed)
        try:
            read_tflite(buf)
        except EdgepackError:
            continue
        pid = os.fork()
        if pid == 0:  # child: quiet, and never back into this loop
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                from ai_edge_litert.interpreter import Interpreter

                interp = Interpreter(model_content=buf)
                interp.allocate_tensors()
                for d in interp.get_input_details():
                    interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
                interp.invoke()
                os._exit(0)
            except BaseException:  # noqa: BLE001 - any failure is 'refused'; only signals count as crashes
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            outcomes[f"crashed (signal {os.WTERMSIG(status)})"] += 1
        else:
            outcomes["ran" if os.WEXITSTATUS(status) == 0 else "refused by LiteRT"] += 1
    return outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", type=int, default=5000, help="mutations per model")
    ap.add_argument("--manifest", type=int, default=2000, help="manifest mutations")
    ap.add_argument("--recipes", type=int, default=2000, help="hostile recipes given to convert --recipe")
    ap.add_argument("--reproduce", type=int, default=2000, help="hostile manifests given to reproduce")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--run", action="store_true", help="also run verified mutations on LiteRT (forked children)")
    args = ap.parse_args()
    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(False)
    findings = 0
    with tempfile.TemporaryDirectory(prefix="edgepack-fuzz-") as tmp:
        bundles = make_bundles(Path(tmp))
        seeds = range(args.seed, args.seed + args.tflite)
        for mode, bundle in bundles.items():
            data = (bundle / "model.tflite").read_bytes()
            start = time.perf_counter()
            outcomes, found = fuzz_tflite(data, seeds)
            findings += len(found)
            took = time.perf_counter() - start
            print(f".tflite ({mode}, {len(data)} bytes): {args.tflite} mutations in {took:.1f}s, "
                  f"accepted {outcomes['accepted']}, rejected {outcomes['rejected']}, findings {len(found)}")
            for seed, what in found[:10]:
                print(f"  seed {seed}: {what}")
            if args.run:
                print(f"  verified mutations on LiteRT: {dict(run_accepted(data, seeds))}")
        start = time.perf_counter()
        outcomes, found = fuzz_manifest(bundles["int8"], Path(tmp) / "m",
                                        range(args.seed, args.seed + args.manifest))
        findings += len(found)
        print(f"manifest: {args.manifest} mutations in {time.perf_counter() - start:.1f}s, accepted "
              f"{outcomes['accepted']}, rejected {outcomes['rejected']}, findings {len(found)}")
        for seed, what in found[:10]:
            print(f"  seed {seed}: {what}")
        findings += fuzz_permissions(Path(tmp), bundles["int8"], args)
    return 1 if findings else 0


def fuzz_permissions(tmp: Path, bundle: Path, args: argparse.Namespace) -> int:
    """Hostile recipes and manifests: payload runs and unexpected errors (both must be 0)."""
    marker = tmp / "PAYLOAD_RAN"
    work = tmp / "recipes"
    work.mkdir()
    model, metric = make_payloads(work, marker)
    findings = 0
    for what, count, run in (
            ("recipe (convert --recipe)", args.recipes,
             lambda seeds: fuzz_recipes(work, base_recipe(model, metric, tmp / "calib.npy"), marker, seeds)),
            ("manifest (reproduce)", args.reproduce,
             lambda seeds: fuzz_reproduce(bundle, tmp / "reproduce", marker, seeds))):
        if count <= 0:
            continue
        start = time.perf_counter()
        outcomes, found = run(range(args.seed, args.seed + count))
        unexpected = [f for f in found if f[1] != "payload ran"]
        findings += len(found)
        print(f"{what}: {count} mutations in {time.perf_counter() - start:.1f}s, {dict(outcomes)}; "
              f"payload runs {outcomes['payload ran']}, unexpected errors {len(unexpected)}")
        for seed, text in found[:10]:
            print(f"  seed {seed}: {text}")
    return findings


if __name__ == "__main__":
    sys.exit(main())
