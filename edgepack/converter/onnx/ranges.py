"""A QDQ model's activation ranges, kept: each ONNX tensor whose QuantizeLinear/DequantizeLinear pair
was removed (:mod:`.dequantize`) is found among the calibrated TFLite model's tensors by its values
on one probe input (names do not survive onnx2tf; values do, up to a layout change: sorted values
are compared), and its recorded range replaces the one TensorFlow's calibrator measured."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_CLOSE = 1e-3  # sorted values this close (relative to the tensor's magnitude) are the same tensor


def onnx_values(proto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The values of ``names`` in ``proto`` on ``feeds`` (tensors folded away are left out)."""
    import onnx
    from onnx import helper

    from edgepack.converter.onnx.prepare import run_proto

    produced = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    wanted = [n for n in names if n in produced]
    if not wanted:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    have = {o.name for o in probe.graph.output}
    for n in wanted:
        if n not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(n))
    outs = run_proto(probe, feeds, wanted)
    return dict(zip(wanted, outs))


def tflite_values(model: bytes, feeds: dict[str, np.ndarray], inputs) -> dict[int, np.ndarray]:
    """Every tensor of the calibrated float model on ``feeds`` (mapped to the TFLite layout)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.formats.base import signature_name

    interp = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    details = interp.get_input_details()
    for d, m in zip(_ordered(details, inputs, signature_name), inputs):
        x = feeds[m.name]
        x = np.transpose(x, m.perm) if m.perm else x
        interp.set_tensor(d["index"], np.asarray(x, d["dtype"]).reshape(d["shape"]))
    interp.invoke()
    out = {}
    for t in interp.get_tensor_details():
        try:
            out[t["index"]] = np.asarray(interp.get_tensor(t["index"]))
        except ValueError:
            continue
    return out


def _ordered(details: list[dict], inputs, signature_name) -> list[dict]:
    by_name = {}
    for d in details:
        for m in inputs:
            if signature_name(m.name) in d["name"]:
                by_name.setdefault(m.name, d)
    return [by_name.get(m.name, details[i]) for i, m in enumerate(inputs)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size != b.size or not a.size:
        return False
    x, y = np.sort(a.reshape(-1).astype(np.float64)), np.sort(b.reshape(-1).astype(np.float64))
    return float(np.max(np.abs(x - y))) <= _CLOSE * max(1.0, float(np.max(np.abs(x))))


def apply_source_ranges(calibrated, proto, ranges: dict[str, list[float]], feeds: dict[str, np.ndarray],
                        inputs, mode) -> tuple[bytes, dict[str, Any]]:
    """The model quantized again with the QDQ ranges on the tensors they belong to; what was kept."""
    from edgepack.request import QuantizeMode

    source = onnx_values(proto, feeds, list(ranges))
    values = tflite_values(calibrated.model, feeds, inputs)
    chosen: dict[str, tuple[float, float]] = {}
    kept = []
    for t in calibrated.tensors():
        v = values.get(t.index)
        if v is None:
            continue
        match = next((name for name, s in source.items() if _same(s, v)), None)
        if match is not None:
            chosen[t.name] = tuple(ranges[match])
            kept.append(match)
    model = calibrated.quantize(ranges=chosen, float_output=mode is QuantizeMode.INT8_FLOAT_IO) if chosen else None
    detail = {"recorded": len(ranges), "kept": len(set(kept)), "tflite_tensors": len(chosen),
              "kept_tensors": sorted(set(kept))[:20],
              "not_found": sorted(set(ranges) - set(kept))[:20]}
    log.info("QDQ activation ranges kept for %d of %d tensors", detail["kept"], detail["recorded"])
    return model, detail
