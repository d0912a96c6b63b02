"""What an optimisation bought: parameters, multiply-accumulates, .tflite bytes, LiteRT latency."""

from __future__ import annotations

import io
import statistics
import time
import zipfile
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.optimize.graph import read_graph


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (batch 1) over conv, depthwise and dense layers."""
    total = 0
    for node in read_graph(model).nodes:
        kind = type(node.layer).__name__
        if not node.output_shapes or not node.input_shapes:
            continue
        out, inp = node.output_shapes[0], node.input_shapes[0]
        if None in out[1:] or inp[-1] is None:
            continue
        cfg = node.layer.get_config()
        out_elems = int(np.prod(out[1:], dtype=np.int64))
        k = int(np.prod(cfg.get("kernel_size", (1,)), dtype=np.int64))
        if kind in ("Conv1D", "Conv2D", "Conv3D"):
            total += out_elems * k * int(inp[-1]) // int(cfg.get("groups", 1) or 1)
        elif kind == "DepthwiseConv2D":
            total += out_elems * k
        elif kind.startswith("SeparableConv"):
            mid = int(inp[-1]) * int(cfg.get("depth_multiplier", 1))
            positions = out_elems // int(out[-1])
            total += positions * mid * k + out_elems * mid
        elif kind == "Dense":
            total += out_elems * int(inp[-1])
    return int(total)


def zip_size(data: bytes) -> int:
    """Bytes of ``data`` deflated in a zip archive: what sparsity saves in download size."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.tflite", data)
    return len(buf.getvalue())


def litert_p50_ms(tflite: bytes, runs: int = 50, warmup: int = 5, threads: int = 1) -> float:
    """Median latency (ms) of one LiteRT invoke on random inputs of the model's own shapes/types."""
    from ai_edge_litert.interpreter import Interpreter

    with capture_native_output():
        interp = Interpreter(model_content=tflite, num_threads=threads)
        interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            x = rng.random(d["shape"]).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=d["shape"]).astype(dtype)
        interp.set_tensor(d["index"], x)
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 4)
