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
    return int(sum(layer_macs(model).values()))


def layer_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates of one inference (batch 1) per conv, depthwise and dense layer (all its calls)."""
    per: dict[str, int] = {}
    for node in read_graph(model).nodes:
        macs = node_macs(type(node.layer).__name__, node.layer.get_config(), node.input_shapes, node.output_shapes)
        if macs is not None:
            per[node.layer.name] = per.get(node.layer.name, 0) + macs
    return per


def node_macs(kind: str, cfg: dict, input_shapes: list[tuple], output_shapes: list[tuple]) -> int | None:
    """MACs of one call of a layer of class ``kind``; None for layers without multiply-accumulates."""
    if not output_shapes or not input_shapes:
        return None
    out, inp = output_shapes[0], input_shapes[0]
    if None in out[1:] or inp[-1] is None:
        return None
    out_elems = int(np.prod(out[1:], dtype=np.int64))
    k = int(np.prod(cfg.get("kernel_size", (1,)), dtype=np.int64))
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        return out_elems * k * int(inp[-1]) // int(cfg.get("groups", 1) or 1)
    if kind == "DepthwiseConv2D":
        return out_elems * k
    if kind.startswith("SeparableConv"):
        mid = int(inp[-1]) * int(cfg.get("depth_multiplier", 1))
        positions = out_elems // int(out[-1])
        return positions * mid * k + out_elems * mid
    if kind == "Dense":
        return out_elems * int(inp[-1])
    return None


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
