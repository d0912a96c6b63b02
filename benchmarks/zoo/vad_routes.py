"""The int8 routes for a silero VAD model, each streamed: full int8 (what an integer-only MCU gets),
int8 with float I/O, and the accuracy budgets, with two calibration sets.

Every route is ``edgepack convert MODEL -o B <zoo shape flags> <route flags> --calibration C`` then
``edgepack validate B --data STREAM --reference MODEL --stream`` over the zoo's stream (the
VAD rows' ``stream.npz``, 60 s; the row key ``stream10`` is older than that) and over a
40 s stream of another utterance. Calibration sets: **synth**,
the zoo's ``calib.npz``; **espeak**, 20 s of espeak-ng speech (seed 1, not the validated utterance)
with the states onnxruntime carries into each window. Run by ``model_zoo.py --vad-routes``; its
rows are kept in build/zoo/results.json and rendered into the model-zoo page.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.zoo import measure, speech

# (flags after --quantize, calibration set, also on the 40 s stream)
ROUTES: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("--quantize", "int8"), "synth", True),
    (("--quantize", "int8"), "espeak", True),
    (("--quantize", "int8-float-io"), "espeak", False),
    (("--quantize", "int8-float-io", "--max-drop", "1", "--metric", "examples/task_metrics.py:vad_decision_agreement"),
     "espeak", True),
    (("--quantize", "int8-float-io", "--min-sqnr", "15"), "espeak", False),
    (("--quantize", "int8-float-io", "--min-sqnr", "20"), "synth", True),
    (("--quantize", "int8-float-io", "--min-sqnr", "20"), "espeak", True),
    (("--quantize", "int8-float-io", "--min-sqnr", "25"), "espeak", True),
    (("--quantize", "int8", "--target", "cortex-m4", "--min-sqnr", "20"), "espeak", False),
    (("--quantize", "int16x8",), "espeak", False),
)
ESPEAK_SECONDS, LONG_SECONDS = 20.0, 40.0


def _espeak_calibration(model_path: Path, work: Path) -> tuple[Path, int]:
    path = work / "calib_espeak.npz"
    data = speech.vad_stream(model_path, speech.utterance_track(ESPEAK_SECONDS, seed=1)[0])
    np.savez(path, **data)
    return path, len(data["input"])


def _long_stream(work: Path) -> Path:
    path = work / "stream40.npz"
    audio, _ = speech.utterance_track(LONG_SECONDS, seed=2)
    from edgepack.validation.frames import cut_frames

    np.savez(path, input=cut_frames(audio, 576, 512).astype(np.float32))
    return path


def _float_ops(bundle: Path) -> int:
    """Ops of the bundle's model computing in float (QUANTIZE/DEQUANTIZE at the edges not counted)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return sum(1 for op in interp._get_ops_details()
               if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and any(dtypes.get(o) == np.float32
                                                                          for o in op["outputs"]))


def _stream(bundle: Path, frames: Path, model_path: Path, work: Path, timeout: float) -> dict:
    v = measure.run([str(measure.BIN / "edgepack"), "validate", str(bundle), "--data", str(frames), "--reference",
                     str(model_path), "--stream", "--json"], work, timeout, work / f"{frames.stem}.log")
    if not v.ok:
        return {"error": v.reason}
    report = json.loads((bundle / "validation_stream.json").read_text())
    out = next(n for n in report["decisions"]["litert"] if n not in report["state_pairs"].values())
    d = report["decisions"]["litert"][out]
    return {"agreeing": d["agreeing"], "decisions": d["decisions"], "interval95": d["interval95"]}


def run_routes(model_path: Path, work: Path, shape_flags: list[str], timeout: float) -> list[dict]:
    """Every route of :data:`ROUTES` on ``model_path``; ``work`` holds the zoo's calib.npz and stream.npz."""
    espeak, espeak_n = _espeak_calibration(model_path, work)
    calib = {"synth": (work / "calib.npz", None), "espeak": (espeak, espeak_n)}
    long_stream = _long_stream(work)
    rows = []
    for i, (flags, calib_name, long) in enumerate(ROUTES):
        bundle = work / f"route_{i}"
        path, samples = calib[calib_name]
        cmd = [str(measure.BIN / "edgepack"), "convert", str(model_path), "-o", str(bundle), "--force",
               *shape_flags, *flags, "--calibration", str(path),
               *(["--calibration-samples", str(samples)] if samples else [])]
        r = measure.run(cmd, work, timeout, work / f"route_{i}.log")
        row = {"flags": " ".join(flags), "calib": calib_name, "rc": r.rc, "reason": "" if r.ok else r.reason,
               "seconds": r.seconds}
        if r.ok:
            row.update(bytes=(bundle / "model.tflite").stat().st_size, float_ops=_float_ops(bundle),
                       stream10=_stream(bundle, work / "stream.npz", model_path, work, timeout))
            if long:
                row["stream40"] = _stream(bundle, long_stream, model_path, work, timeout)
        rows.append(row)
    return rows


def _agree(s: dict | None) -> str:
    if not s:
        return ""
    if "error" in s:
        return f"failed: {s['error'][:80]}"
    lo, hi = s["interval95"]
    return f"{s['agreeing']} = {s['agreeing'] / s['decisions']:.2%} ({lo:.1%}–{hi:.1%})"


def render_routes(model: str, rows: list[dict]) -> str:
    """The routes table (markdown) for :func:`run_routes`' rows."""
    lines = ["", f"## int8 routes for {model}, streamed", "",
             "`edgepack convert MODEL -o B <zoo flags> FLAGS --calibration C`, then `edgepack validate B --data STREAM "
             "--reference MODEL --stream`; decisions at 0.5 against onnxruntime, each side carrying its own state "
             f"(95 % Wilson interval). Calibration: **synth** = the zoo's calib.npz; **espeak** = {ESPEAK_SECONDS:.0f} s "
             f"of espeak-ng speech (seed 1) with onnxruntime's states. Streams: the zoo's one above (60 s); "
             f"{LONG_SECONDS:.0f} s "
             "of another utterance (seed 2). Written by `benchmarks/zoo/vad_routes.py`.", "",
             "| FLAGS | calib | float ops | bytes | zoo stream | 40 s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["rc"] != 0:
            why = r["reason"][:140].replace("|", "/")
            lines.append(f"| `{r['flags']}` | {r['calib']} | — | — | exit {r['rc']}: {why} | |")
            continue
        lines.append(f"| `{r['flags']}` | {r['calib']} | {r['float_ops']} | {r['bytes']:,} | "
                     f"{_agree(r.get('stream10'))} | {_agree(r.get('stream40'))} |")
    return "\n".join(lines) + "\n"
