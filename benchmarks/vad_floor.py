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

from benchmarks.vad_int8 import stream_states
from benchmarks.zoo import corpus


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
        a, b = (stream_states(model, path, windows, optimize=o)[1] for o in (True, False))
        per = np.array([sqnr_db(np.array([x]), np.array([y])) for x, y in zip(a, b)])
        print(f"{model.name}: {len(per)} frames, worst {per.min():.1f} dB, {int((per < 60).sum())} frames < 60 dB, "
              f"decisions differing {int(((a > 0.5) != (b > 0.5)).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
