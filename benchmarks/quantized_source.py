"""An already-quantized ONNX model re-quantized by edgepack, against its float twin: does the bundle read as
well as onnxruntime running the original? (issue 22: ddddocr's ``common_old``, onnxruntime ``quantize_dynamic``.)

The float twin is the model with its weights dequantized exactly and no run-time activation rounding
(edgepack's dequantization, ``emulate_rounding=False``): the float model both quantized forms approximate.
Rows (whole-tensor SQNR / worst sample / the task metric, against the twin, on held-out inputs):

- onnxruntime running the original (its dynamic quantization: each conv's input rounded at run time);
- onnxruntime ``quantize_static`` of the twin (MinMax, QDQ, per-channel: static int8 by another tool);
- ``edgepack convert ORIGINAL --quantize MODE`` for each ``--modes`` (its weight grids kept, manifest
  ``source_weight_grids``), run on LiteRT.

    nice -n 5 python benchmarks/quantized_source.py                      # common_old, 32 calib / 16 held
    nice -n 5 python benchmarks/quantized_source.py --modes dynamic,int16x8,int8-float-io
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.peers import ort_child
from benchmarks.zoo import corpus, measure
from benchmarks.zoo.inputs import make_feeds


def float_twin(original: Path, out: Path) -> Path:
    """The original with edgepack's dequantization and no activation rounding, names onnxruntime's quantizer
    does not collide with (it writes ``<name>_scale`` initializers of its own)."""
    import onnx

    from edgepack.converter.onnx.dequantize import dequantize

    proto = onnx.load(str(original))
    dequantize(proto, emulate_rounding=False)
    graph = proto.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output} | {""}

    def rename(name: str) -> str:
        return name if name in keep else "t_" + name.replace("_scale", "_s").replace("_zero_point", "_zp")

    for node in graph.node:
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
        node.name = "n_" + node.name
    for tensor in [*graph.initializer, *graph.value_info]:
        tensor.name = rename(tensor.name)
    onnx.save(proto, str(out))
    return out


def score(metric, twin: list[np.ndarray], got: list[np.ndarray]) -> str:
    from edgepack.validation.metrics import sqnr_db

    ref, out = np.stack(twin[0]), np.stack(got[0]).reshape(np.stack(twin[0]).shape)
    per = [sqnr_db(r, o) for r, o in zip(ref, out)]
    return f"{sqnr_db(ref, out):.1f} / {min(per):.1f} / {metric([out], [ref], None):.3f}"


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    from edgepack import api

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ddddocr_common_old")
    ap.add_argument("--modes", default="dynamic,int16x8,int8-float-io")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--held", type=int, default=16)
    args = ap.parse_args(argv)
    model = next(m for m in corpus.MODELS if m.name == args.model)
    original = corpus.model_path(model)
    spec = importlib.util.spec_from_file_location("task_metrics", ROOT / "examples" / "task_metrics.py")
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    metric = metrics.ctc_string_accuracy if model.kind == "ocr" else (lambda o, r, _: float("nan"))
    calib = make_feeds(model.kind, original, "calib", args.calibration)
    held = make_feeds(model.kind, original, "held", args.held)
    with tempfile.TemporaryDirectory(prefix="quantized_source_") as tmp:
        work = Path(tmp)
        twin = float_twin(original, work / "twin.onnx")
        refs = measure.run_onnxruntime(twin, held)
        print(f"{model.name}: whole dB / worst sample dB / task against the float twin, {len(held)} held inputs")
        print(f"| onnxruntime running the original | {score(metric, refs, measure.run_onnxruntime(original, held))} |")
        ort_child.quantize(twin, calib, "MinMax", work / "static.onnx")
        print(f"| onnxruntime quantize_static MinMax of the twin | "
              f"{score(metric, refs, measure.run_onnxruntime(work / 'static.onnx', held))} |")
        calib_npz = measure.write_edgepack_data(calib, work / "calib.npz")
        shapes = [f"{k}:{'x'.join(map(str, v))}" for k, v in model.shapes.items()]
        for mode in args.modes.split(","):
            res = api.convert(model=original, output=work / mode, quantize=mode, calibration=calib_npz,
                              input_shapes=shapes)
            grids = next(s for s in res.manifest.stages if s.name == "convert").detail.get("source_weight_grids")
            print(f"| edgepack --quantize {mode} | {score(metric, refs, measure.run_bundle(work / mode, held))} | "
                  f"grids {grids} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
