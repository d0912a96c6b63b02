"""A streaming model's own float32 reproducibility: onnxruntime against itself (graph optimizations on vs.
off), streamed over the model zoo's VAD stream, each run carrying its own state. Per-frame SQNR of the speech
probability, as ``benchmarks/model_zoo.py`` measures a bundle: when onnxruntime cannot reach a figure against
itself, no converter can show it.

    python benchmarks/vad_floor.py --models silero_vad_half,silero_vad_openvino_16k

Needs the stream ``benchmarks/model_zoo.py`` wrote (build/zoo/runs/MODEL/stream.npz).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.zoo import corpus


def stream(model: Path, windows: np.ndarray, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    state, probs = np.zeros((2, 1, 128), np.float32), []
    for w in windows:
        feed = {"input": w.reshape(1, -1), "state": state, **({"sr": np.array(16000, np.int64)} if "sr" in names else {})}
        p, state = sess.run(["output", "stateN"], feed)
        probs.append(float(np.ravel(p)[0]))
    return np.asarray(probs, np.float64)


def main(argv: list[str] | None = None) -> int:
    from edgepack.validation.metrics import sqnr_db

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="silero_vad_half,silero_vad_openvino_16k")
    args = ap.parse_args(argv)
    for model in (m for m in corpus.MODELS if m.name in args.models.split(",") and m.kind == "vad"):
        data = corpus.CACHE / "runs" / model.name / "stream.npz"
        if not data.is_file():
            print(f"{model.name}: no {data}; run benchmarks/model_zoo.py --models {model.name} first", file=sys.stderr)
            continue
        windows = np.load(data, allow_pickle=False)["input"]
        path = corpus.model_path(model)
        a, b = stream(path, windows, True), stream(path, windows, False)
        per = np.array([sqnr_db(np.array([x]), np.array([y])) for x, y in zip(a, b)])
        print(f"{model.name}: {len(per)} frames, worst {per.min():.1f} dB, {int((per < 60).sum())} frames < 60 dB, "
              f"decisions differing {int(((a > 0.5) != (b > 0.5)).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
