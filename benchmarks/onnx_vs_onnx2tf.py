"""edgepack convert (int8) against the plain onnx2tf CLI (``-oiqt``) on the same ONNX model and data.

Both run as a user would run them, as fresh processes: ``edgepack convert model.onnx --quantize int8
--calibration calib.npy`` and ``onnx2tf -i model.onnx -oiqt -cind image calib_nhwc.npy 0 1`` (with
the venv's bin on PATH so onnx2tf finds ``onnxsim``, and its sample file pre-placed so it stays
offline). Prints wall times, the ratio, and each int8 model's agreement with onnxruntime on held-out
data (top-1 agreement, SQNR).

    python benchmarks/onnx_vs_onnx2tf.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(path: Path, size: int = 32, classes: int = 10) -> None:
    """Two conv blocks and a classifier head on a 3x32x32 NCHW image (a PyTorch-style export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [w("w1", 16, 3, 3, 3), w("b1", 16, scale=0.05), w("w2", 32, 16, 3, 3, scale=0.1), w("b2", 32, scale=0.05),
         w("fw", 32, classes), w("fb", classes, scale=0.01)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def run_tflite(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for x in x_nhwc:
        x = x[None]
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] in (np.int8, np.uint8):
            scale, zp = out["quantization"]
            y = (y - zp) * scale
        outs.append(y)
    return np.concatenate(outs)


def agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    from edgepack.validation.metrics import sqnr_db, top1_agreement

    return top1_agreement(ref, got), sqnr_db(ref, got)


def main() -> None:
    from edgepack.converter.onnx.translate import write_sample_images
    from edgepack.formats.detect import load_model

    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
        d = Path(tmp)
        build_model(d / "model.onnx")
        rng = np.random.default_rng(1)
        calib = rng.random((100, 3, 32, 32), dtype=np.float32)
        held = rng.random((200, 3, 32, 32), dtype=np.float32)
        np.save(d / "calib.npy", calib)
        np.save(d / "calib_nhwc.npy", calib.transpose(0, 2, 3, 1))
        write_sample_images(d)  # keeps the plain onnx2tf run offline too
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "3"}

        t_edge = timed([str(BIN / "edgepack"), "convert", "model.onnx", "-o", "bundle", "--quantize", "int8",
                        "--calibration", "calib.npy", "-q"], d, env)
        t_o2t = timed([str(BIN / "onnx2tf"), "-i", "model.onnx", "-o", "o2t", "-oiqt", "-cind", "image",
                       "calib_nhwc.npy", "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]"], d, env)

        ref = load_model(d / "model.onnx").model({"image": held})[0]
        x_nhwc = held.transpose(0, 2, 3, 1)
        edge = run_tflite(d / "bundle" / "model.tflite", x_nhwc)
        o2t = run_tflite(d / "o2t" / "model_full_integer_quant.tflite", x_nhwc)
        a_edge, s_edge = agreement(ref, edge)
        a_o2t, s_o2t = agreement(ref, o2t)
        size_edge = (d / "bundle" / "model.tflite").stat().st_size
        size_o2t = (d / "o2t" / "model_full_integer_quant.tflite").stat().st_size

    print("model: 2 conv + GAP + Gemm, 1x3x32x32 NCHW, int8 (int8 I/O), 100 calibration / 200 held-out samples")
    print(f"edgepack convert --quantize int8 : {t_edge:6.1f} s  {size_edge:7d} B  top-1 vs onnxruntime "
          f"{a_edge:.3f}  SQNR {s_edge:5.1f} dB")
    print(f"onnx2tf -oiqt (full_integer)    : {t_o2t:6.1f} s  {size_o2t:7d} B  top-1 vs onnxruntime "
          f"{a_o2t:.3f}  SQNR {s_o2t:5.1f} dB")
    print(f"wall-time ratio edgepack/onnx2tf: {t_edge / t_o2t:.2f}")


if __name__ == "__main__":
    main()
