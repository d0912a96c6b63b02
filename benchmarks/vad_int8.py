"""silero VAD in integer modes, streamed: speech decisions at 0.5 against the float model, per variant.

Calibration: 20 s of espeak-ng speech and silence (seed 1) cut into silero's windows, each with the
state onnxruntime carries into it (states reached by streaming real audio, not zeros). Evaluation:
another 120 s utterance (seed 0, the model zoo's stream made longer: 3,750 windows), bundle and onnxruntime each
carrying its own state (``edgepack validate --stream``: LiteRT, and TFLite Micro for microcontroller
bundles). Decisions at 0.5 with their 95 % Wilson interval; a goal of >= 99 % is met when the lower
bound is. Fragility: how many of the float model's probabilities lie within 0.05 of the threshold.

    python benchmarks/vad_int8.py                                   # 6 variants x 3 modes (~60 min)
    python benchmarks/vad_int8.py --models silero_vad --modes mcu16 --out /tmp/vad.md
    python benchmarks/vad_int8.py --models silero_vad --modes int8,phone-plain --peers MinMax,Percentile,Entropy

``--peers``: onnxruntime ``quantize_static`` (QDQ, int8 weights per channel, int8 activations per tensor:
TFLite's scheme; ``benchmarks/peers/ort_child.py``) on the same calibration windows and states, streamed over the
same windows carrying its own state. It quantizes the graph edgepack translates (edgepack's preparation: ``sr``
frozen, the sample-rate ``If`` inlined, static shapes): onnxruntime's quantizer does not reach into an ``If``'s
branches, where the published silero graphs keep the whole network.

Modes (flags after ``edgepack convert MODEL -o B --input-shape ... --calibration calib.npz``):
``phone`` ``--quantize int8-float-io --min-sqnr 20``; ``phone25``, ``phone30`` the same at 25 and 30 dB;
``phone-plain`` ``--quantize int8-float-io``; ``int8`` ``--quantize int8`` (phones, full int8, no budget);
``mcu`` ``--quantize int8 --target cortex-m4``; ``mcu16`` ``--quantize int16x8 --target cortex-m4``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.model_zoo import shape_args
from benchmarks.zoo import corpus, speech

MODES = {"phone": ["--quantize", "int8-float-io", "--min-sqnr", "20"],
         "phone25": ["--quantize", "int8-float-io", "--min-sqnr", "25"],
         "phone30": ["--quantize", "int8-float-io", "--min-sqnr", "30"],
         "phone-plain": ["--quantize", "int8-float-io"],
         "int8": ["--quantize", "int8"],
         "mcu": ["--quantize", "int8", "--target", "cortex-m4"],
         "mcu16": ["--quantize", "int16x8", "--target", "cortex-m4"]}
SEQ = 8  # windows per call of silero_vad_16k_sequence
BAND = 0.05


def _session(path: Path, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:  # benchmarks/vad_floor.py: the same model without onnxruntime's graph optimizations
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stream_states(model: corpus.ZooModel, path: Path, windows: np.ndarray,
                  optimize: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feeds (each with the state onnxruntime carries into it) and the float speech probabilities."""
    sess = _session(path, optimize)
    names = [i.name for i in sess.get_inputs()]
    if model.kind == "vad_seq":
        calls = windows[:len(windows) // SEQ * SEQ].reshape(-1, SEQ, windows.shape[-1])
        h = c = np.zeros((1, 1, 128), np.float32)
        feeds, probs = {"input": [], "h": [], "c": []}, []
        for x in calls:
            for k, v in (("input", x), ("h", h), ("c", c)):
                feeds[k].append(v)
            p, h, c = sess.run(["speech_probs", "hn", "cn"], {"input": x, "h": h, "c": c})
            probs.extend(np.ravel(p))
        # edgepack's layout: a leading axis of 1 is the sample axis (h, c), 8 windows are one whole sample
        return {k: np.stack([a[0] if a.shape[0] == 1 else a for a in v]) for k, v in feeds.items()}, np.asarray(probs)
    state = np.zeros((2, 1, 128), np.float32)
    feeds, probs = {"input": [], "state": []}, []
    for w in windows:
        feed = {"input": w[None], "state": state, **({"sr": np.array(16000, np.int64)} if "sr" in names else {})}
        feeds["input"].append(w)
        feeds["state"].append(state)
        p, state = sess.run(["output", "stateN"], feed)
        probs.append(float(np.ravel(p)[0]))
    return {k: np.stack(v) for k, v in feeds.items()}, np.asarray(probs)


def data(model: corpus.ZooModel, path: Path, work: Path, seconds: float) -> tuple[Path, Path, np.ndarray]:
    """calib.npz (windows and their states), stream.npz (windows only) and the float probabilities."""
    from edgepack.validation.frames import cut_frames

    work.mkdir(parents=True, exist_ok=True)
    calib_audio = speech.utterance_track(20.0, seed=1)[0]
    feeds, _ = stream_states(model, path, cut_frames(calib_audio, 576, 512).astype(np.float32))
    np.savez(work / "calib.npz", **feeds)
    windows = cut_frames(speech.utterance_track(seconds, seed=0)[0], 576, 512).astype(np.float32)
    _, probs = stream_states(model, path, windows)
    if model.kind == "vad_seq":
        windows = windows[:len(windows) // SEQ * SEQ].reshape(-1, SEQ, windows.shape[-1])
    np.savez(work / "stream.npz", input=windows)
    return work / "calib.npz", work / "stream.npz", probs


def run_mode(model: corpus.ZooModel, path: Path, work: Path, mode: str, calib: Path, stream: Path,
             probs: np.ndarray) -> list[dict]:
    from click.testing import CliRunner

    from benchmarks.ptq_peers import tflite_float_ops
    from edgepack import api
    from edgepack.cli import main

    bundle = work / f"bundle_{mode}"
    flags = [*shape_args(model, "--input-shape"), "--calibration", str(calib),
             "--calibration-samples", str(len(np.load(calib)["input"])),
             *MODES[mode]]
    start = time.perf_counter()
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(bundle), "--force", *flags])
    seconds = time.perf_counter() - start
    base = {"model": model.name, "mode": mode, "flags": " ".join(MODES[mode]), "convert_s": round(seconds, 1)}
    if res.exit_code != 0:
        return [{**base, "error": (res.output.strip().splitlines() or ["?"])[-1][:200]}]
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = api.validate_stream(bundle=bundle, data=stream, reference=path)
    near = int(np.sum(np.abs(probs - 0.5) < BAND))
    rows = []
    for runtime, outputs in report.decisions.items():
        for name, d in outputs.items():
            if name in report.state_pairs.values():
                continue
            rows.append({**base, "bytes": (bundle / "model.tflite").stat().st_size,
                         "float_ops": tflite_float_ops(bundle / "model.tflite")[0], "runtime": runtime,
                         "frames": d["decisions"], "agreeing": d["agreeing"], "agreement": d["agreement"],
                         "interval95": d["interval95"], "near_threshold": near,
                         "graph": (manifest.get("extras") or {}).get("graph", {}).get("integer_forms")})
    return rows


def run_peer(model: corpus.ZooModel, path: Path, work: Path, method: str, calib: Path, stream: Path,
             probs: np.ndarray) -> list[dict]:
    """onnxruntime ``quantize_static`` (``method``) calibrated on ``calib``, streamed over ``stream``."""
    import onnxruntime as ort

    from benchmarks.peers import ort_child
    from benchmarks.ptq_peers import qdq_float_ops

    base = {"model": model.name, "mode": f"onnxruntime {method}", "flags": "quantize_static QDQ per-channel"}
    graph = ort_child.edgepack_graph(path, model.shapes, work / f"{model.name}_prepared.onnx", model.values)
    with np.load(calib, allow_pickle=False) as z:
        if model.kind == "vad_seq":  # 8 windows a call, h and c stored without their leading axis of 1
            feeds = [{"input": x, "h": h[None], "c": c[None]} for x, h, c in zip(z["input"], z["h"], z["c"])]
        else:
            feeds = [{"input": w[None], "state": st} for w, st in zip(z["input"], z["state"])]
    out = work / f"{model.name}_ort_{method}.onnx"
    start = time.perf_counter()
    try:
        ort_child.quantize(graph, feeds, method, out)
    except Exception as err:  # the peer's refusal is its row
        return [{**base, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}]
    seconds = time.perf_counter() - start
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    mine: list[float] = []
    if model.kind == "vad_seq":
        h = c = np.zeros((1, 1, 128), np.float32)
        for x in np.load(stream, allow_pickle=False)["input"]:
            p, h, c = sess.run(None, {"input": x, "h": h, "c": c})[:3]
            mine.extend(np.ravel(p).tolist())
    else:
        state = np.zeros((2, 1, 128), np.float32)
        for w in np.load(stream, allow_pickle=False)["input"]:
            p, state = sess.run(None, {"input": w[None], "state": state})[:2]
            mine.append(float(np.ravel(p)[0]))
    return [_decision_row(base, np.asarray(mine), probs, out.stat().st_size, qdq_float_ops(out)[0], "onnxruntime",
                          seconds)]


def _decision_row(base: dict, mine: np.ndarray, probs: np.ndarray, size: int, float_ops: int, runtime: str,
                  seconds: float) -> dict:
    from edgepack.validation.intervals import wilson_interval

    agreeing = int(np.sum((mine > 0.5) == (probs > 0.5)))
    iv = wilson_interval(agreeing, len(probs))
    return {**base, "bytes": size, "float_ops": float_ops, "runtime": runtime, "frames": len(probs),
            "agreeing": agreeing, "agreement": agreeing / len(probs), "interval95": [iv.low, iv.high],
            "near_threshold": int(np.sum(np.abs(probs - 0.5) < BAND)), "convert_s": round(seconds, 1)}


def render(rows: list[dict], command: str) -> str:
    lines = [f"Generated by `{command}`.", "",
             "| model | mode | flags | bytes | float ops | runtime | frames | agree | 95 % interval | "
             "float probs within 0.05 of 0.5 | convert s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | `{r['flags']}` | error: {r['error']} |||||||")
            continue
        lo, hi = r["interval95"]
        lines.append(f"| {r['model']} | {r['mode']} | `{r['flags']}` | {r['bytes']:,} | {r['float_ops']} | {r['runtime']} "
                     f"| {r['frames']} | {r['agreeing']} = {100 * r['agreement']:.2f} % | {100 * lo:.1f}-{100 * hi:.1f} % "
                     f"| {r['near_threshold']} | {r['convert_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    vads = [m for m in corpus.MODELS if m.kind in ("vad", "vad_seq")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(m.name for m in vads))
    ap.add_argument("--modes", default="phone25,mcu,mcu16")
    ap.add_argument("--peers", default="", help="onnxruntime quantize_static methods: MinMax,Percentile,Entropy")
    ap.add_argument("--seconds", type=float, default=120.0, help="evaluation stream length (120 s: 3,750 windows)")
    ap.add_argument("--out", type=Path, default=corpus.CACHE / "vad-int8.md")
    args = ap.parse_args(argv)
    rows = []
    for model in (m for m in vads if m.name in args.models.split(",")):
        path = corpus.model_path(model)
        work = corpus.CACHE / "runs" / "vad_int8" / model.name
        calib, stream, probs = data(model, path, work, args.seconds)
        runs = [(m, run_mode) for m in args.modes.split(",") if m] + [(p, run_peer) for p in args.peers.split(",") if p]
        for mode, run in runs:
            for row in run(model, path, work, mode, calib, stream, probs):
                rows.append(row)
                print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(render(rows, "python benchmarks/vad_int8.py " + " ".join(argv or sys.argv[1:])))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
