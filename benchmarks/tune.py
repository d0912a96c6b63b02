"""edgepack tune on the digits CNN for cortex-m4 under a flash limit plain int8 does not meet.

    .venv/bin/python benchmarks/tune.py [--workdir build/bench-tune] [--trials 12] [--epochs 3]

1. plain int8 sets the scale: the limit is --limit (default 0.6) of its bytes (--max-bytes);
2. every single hand-picked technique alone (global channel pruning 0.25/0.5/0.75, per-tensor, QAT)
   at that limit, each a real convert + validate;
3. edgepack tune with grid, random and TPE at the same trial budget over a per-layer-group width
   search plus per-tensor and QAT; prints each sampler's best feasible trial and the trials it needed
   to get within 0.2 points of the best any of them found.

    .venv/bin/python benchmarks/tune.py --postgres-demo [--trials 8]

runs one TPE study with two local workers on a throwaway PostgreSQL server (initdb/pg_ctl in a temporary
folder, removed after) and prints how the trials split between the workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = """\
# a width search per layer group, weight granularity and QAT
per_tensor = [false, true]
qat = [false, true]

[prune_groups]
"conv2d" = [0.0, 0.25, 0.5]
"conv2d_1" = [0.0, 0.25, 0.5, 0.75]
"dense" = [0.0, 0.25, 0.5, 0.75]
"""
SINGLES = {"int8 (plain)": {}, "channels:0.25": {"prune": "channels:0.25"}, "channels:0.5": {"prune": "channels:0.5"},
           "channels:0.75": {"prune": "channels:0.75"}, "per-tensor": {"per_tensor": True}, "qat": {"qat": True}}


def _prepare(w: Path, epochs: int) -> None:
    if (w / "digits.keras").is_file():
        return
    import numpy as np

    from examples.digits_demo import digits_split, prepare

    prepare(w, epochs, 0)
    x_train, _, y_train, _ = digits_split(0)  # the demo's training split, labelled, for fine-tuning
    np.savez(w / "train.npz", x=x_train, y=y_train)


def _single(w: Path, name: str, options: dict, epochs: int, limit: int | None) -> dict:
    from edgepack import api
    from edgepack.errors import TargetConstraintError

    out = w / "singles" / name.replace(":", "_").replace(" ", "_")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train = {"train_data": w / "train.npz", "epochs": epochs} if options else {}
    try:
        res = api.convert(model=w / "digits.keras", output=out, calibration=w / "calibration.npy", target="cortex-m4",
                          force=True, **train, **options)
    except TargetConstraintError as err:
        return {"name": name, "feasible": False, "reason": err.message}
    report = api.validate(bundle=out, data=w / "heldout.npz", check=False)
    size = res.manifest.artifact("model").bytes
    return {"name": name, "bytes": size, "accuracy": round(report.accuracy_bundle * 100, 2),
            "feasible": limit is None or size <= limit, "seconds": round(time.perf_counter() - start, 1)}


def _sampler(w: Path, sampler: str, trials: int, epochs: int, limit: int) -> tuple[dict, list[dict], float]:
    from edgepack import api

    out = w / f"tune-{sampler}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = api.tune(model=w / "digits.keras", output=out, eval_data=w / "heldout.npz", target="cortex-m4",
                      calibration=w / "calibration.npy", train_data=w / "train.npz", epochs=epochs,
                      space=w / "space.toml", sampler=sampler, trials=trials, max_bytes=limit, keep="pareto",
                      on_trial=lambda line: print(f"  [{sampler}] {line}", flush=True))
    with (out / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows, time.perf_counter() - start


def _best_curve(rows: list[dict]) -> list[float]:
    best, curve = float("-inf"), []
    for r in sorted(rows, key=lambda r: int(r["trial"])):
        if r["status"] == "feasible":
            best = max(best, float(r["objective"]))
        curve.append(best)
    return curve


def _postgres_demo(w: Path, trials: int, epochs: int) -> int:
    from collections import Counter

    from edgepack import api
    from tests.tune.conftest import throwaway_postgres

    plain = _single(w, "int8 (plain)", {}, epochs, None)
    limit = int(plain["bytes"] * 0.6)
    out = w / "tune-postgres"
    shutil.rmtree(out, ignore_errors=True)
    with throwaway_postgres() as url:
        start = time.perf_counter()
        result = api.tune(model=w / "digits.keras", output=out, eval_data=w / "heldout.npz", target="cortex-m4",
                          calibration=w / "calibration.npy", train_data=w / "train.npz", epochs=epochs,
                          space=w / "space.toml", sampler="tpe", trials=trials, max_bytes=limit, workers=2,
                          storage=url, study="digits-shared")
        seconds = time.perf_counter() - start
    with (out / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    split = Counter(r["worker"] for r in rows)
    numbers = sorted(int(r["trial"]) for r in rows)
    print(f"two workers, one PostgreSQL study: {len(rows)} trials {numbers} in {seconds / 60:.1f} min; "
          + ", ".join(f"worker {k}: {v} trials" for k, v in sorted(split.items()))
          + f"; best {result['best_trial']['objective'] if result['best_trial'] else '-'}%")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("build/bench-tune"))
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per trial")
    ap.add_argument("--train-epochs", type=int, default=15, help="training the digits CNN once")
    ap.add_argument("--limit", type=float, default=0.6, help="flash limit as a share of plain int8's bytes")
    ap.add_argument("--samplers", default="grid,random,tpe")
    ap.add_argument("--postgres-demo", action="store_true", help="two workers on a throwaway PostgreSQL study")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    _prepare(w, args.train_epochs)
    (w / "space.toml").write_text(SPACE)
    from edgepack._native import quiet_tensorflow

    quiet_tensorflow(False)
    if args.postgres_demo:
        return _postgres_demo(w, args.trials, args.epochs)

    plain = _single(w, "int8 (plain)", {}, args.epochs, None)
    limit = int(plain["bytes"] * args.limit)
    print(f"plain int8: {plain['bytes']} bytes, accuracy {plain['accuracy']:.2f}%; flash limit (--max-bytes) "
          f"{limit} bytes = {args.limit:g} x plain int8")
    singles = [dict(plain, feasible=False)] + [_single(w, n, o, args.epochs, limit) for n, o in SINGLES.items()
                                                if o]
    print("\nsingle techniques at the limit:")
    for s in singles:
        print(f"  {s['name']:<14} {s.get('bytes', '-'):>7} bytes  accuracy {s.get('accuracy', '-')}%  "
              f"{'feasible' if s['feasible'] else 'over the limit'}")
    feasible = [s for s in singles if s["feasible"]]
    best_single = max(feasible, key=lambda s: s["accuracy"]) if feasible else None

    runs = {}
    for sampler in args.samplers.split(","):
        print(f"\nedgepack tune --sampler {sampler} --trials {args.trials}:")
        runs[sampler] = _sampler(w, sampler, args.trials, args.epochs, limit)
    top = max((c for _, rows, _ in runs.values() for c in _best_curve(rows)), default=float("-inf"))
    print(f"\n{'sampler':<8} {'best %':>7} {'bytes':>7} {'trials to within 0.2 pt of ' + f'{top:.2f}':>32} "
          f"{'feasible':>9} {'pruned':>7} {'minutes':>8}")
    summary = {"plain": plain, "limit_bytes": limit, "singles": singles, "best_single": best_single, "samplers": {}}
    for sampler, (result, rows, seconds) in runs.items():
        curve = _best_curve(rows)
        need = next((i + 1 for i, v in enumerate(curve) if v >= top - 0.2), None)
        best = result["best_trial"] or {}
        counts = result["counts"]
        print(f"{sampler:<8} {best.get('objective', float('nan')):>7.2f} {best.get('bytes') or 0:>7} "
              f"{need if need else 'not within budget':>32} {counts.get('feasible', 0):>9} {counts.get('pruned', 0):>7} "
              f"{seconds / 60:>8.1f}")
        summary["samplers"][sampler] = {"best": best, "trials_to_within_0.2": need, "counts": counts,
                                        "minutes": round(seconds / 60, 2), "curve": curve}
    tuned = max((r["best_trial"] for r, _, _ in runs.values() if r["best_trial"]),
                key=lambda b: (b["objective"], -b["bytes"]), default=None)
    if tuned and best_single:
        print(f"\ntuned: {tuned['objective']:.2f}% at {tuned['bytes']} bytes ({tuned['params']}) vs best single "
              f"technique {best_single['name']}: {best_single['accuracy']:.2f}% at {best_single['bytes']} bytes "
              f"({tuned['objective'] - best_single['accuracy']:+.2f} points)")
    (w / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"pictures: {', '.join(str(w / f'tune-{s}' / 'pareto.png') for s in runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
