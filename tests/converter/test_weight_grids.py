"""An already-quantized ONNX model's weight grids kept in the TFLite model: a float model quantized inside
the test with onnxruntime (quantize_dynamic: ConvInteger/MatMulInteger with uint8 weights; quantize_static:
QDQ with uint8 asymmetric weights) converts with int8 weights that hold the source's ``q - z`` with its
scale, channel by channel, and reads closer to the float twin (the same graph with the source's weights,
no activation rounding) than with TensorFlow's own re-quantization."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.validation.metrics import sqnr_db
from tests.converter.onnx_builders import bundle_nchw as _bundle
from tests.converter.onnx_builders import calibration_reader, small_cnn


def _float_model(path, rng):
    def spread(shape, sd):  # channels 1x..4x apart: TensorFlow's per-channel grids are not the source's
        return rng.normal(0, sd, shape) * np.linspace(0.25, 1, shape[0]).reshape(-1, *[1] * (len(shape) - 1))

    return small_cnn(path, {"w1": spread((16, 3, 3, 3), .4), "b1": rng.normal(0, .1, 16),
                            "w2": spread((32, 16, 3, 3), .2), "b2": rng.normal(0, .1, 32),
                            "wf": spread((40, 32), .5).T}, name="grids")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    d = tmp_path_factory.mktemp("grids")
    rng = np.random.default_rng(0)
    float_path = _float_model(d / "float.onnx", rng)
    calib, held = rng.random((64, 3, 12, 12)).astype(np.float32), rng.random((24, 3, 12, 12)).astype(np.float32)
    np.save(d / "calib.npy", calib)
    np.save(d / "held.npy", held)

    quantize_dynamic(str(float_path), str(d / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul"])
    quantize_static(str(float_path), str(d / "qdq.onnx"), calibration_reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    return d


def _source_grids(path) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """TFLite weight shape -> (k = q - z in the TFLite layout [O, ...], scale per output channel)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type in ("ConvInteger", "MatMulInteger"):
            q, zp = consts[n.input[1]], consts[n.input[3]]
            scale = next(consts[i] for m in proto.graph.node if m.op_type == "Mul" and any(
                i.startswith(n.input[1].replace("_quantized", "")) for i in m.input) for i in m.input if i in consts)
        elif n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim >= 2:
            q, scale, zp = (consts[i] for i in n.input)
        else:
            continue
        k = q.astype(np.int64) - zp.astype(np.int64)
        k = np.transpose(k, (0, 2, 3, 1)) if k.ndim == 4 else k.T  # OIHW -> OHWI, [K, N] -> [N, K]
        out[k.shape] = (k, np.full(k.shape[0], float(np.ravel(scale)[0]), np.float32))
    return out


def _tflite_weights(path) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    from ai_edge_litert import schema_py_generated as schema

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    out = {}
    for t in obj.subgraphs[0].tensors:
        data = obj.buffers[t.buffer].data
        if t.type == schema.TensorType.INT8 and data is not None and len(data) and len(t.shape) >= 2:
            out[tuple(t.shape)] = (np.frombuffer(bytes(bytearray(data)), np.int8).reshape(t.shape).astype(np.int64),
                                   np.asarray(t.quantization.scale, np.float32))
    return out


def _twin(path, held):
    """onnxruntime on the source's float twin: its weights dequantized exactly, no activation rounding."""
    import onnx
    import onnxruntime as ort

    from edgepack.converter.onnx.dequantize import dequantize

    proto = onnx.load(str(path))
    dequantize(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": held[i:i + 1]})[0] for i in range(len(held))])


def _convert(src, out, mode, sources):
    res = api.convert(model=src, output=out, quantize=mode, calibration=sources / "calib.npy")
    return next(s for s in res.manifest.stages if s.name == "convert").detail


@pytest.mark.parametrize(("source", "mode", "gain"), [("dynamic.onnx", "int16x8", 4.0), ("qdq.onnx", "int8-float-io", 2.0),
                                                      ("dynamic.onnx", "dynamic", 2.0)])
def test_int8_weights_hold_the_source_integers_and_read_closer_to_the_float_twin(sources, tmp_path, monkeypatch,
                                                                                   source, mode, gain):
    detail = _convert(sources / source, tmp_path / "grids", mode, sources)
    kept = detail["source_weight_grids"]
    assert kept["recorded"] == 3 and kept["of"] == 16 + 32 + 40
    grids, weights = _source_grids(sources / source), _tflite_weights(tmp_path / "grids" / "model.tflite")
    held_channels = 0
    for shape, (k, s) in grids.items():
        if shape not in weights:  # dynamic range leaves weights under 1024 elements float: exact already
            assert mode == "dynamic" and k.size < 1024
            continue
        q, scale = weights[shape]
        fits = np.abs(k.reshape(len(k), -1)).max(axis=1) <= 127
        assert fits.sum() >= len(fits) - 4  # uint8 grids: a channel holding 0 or 255 far from the zero point does not fit
        np.testing.assert_array_equal(q[fits], k[fits])  # the source's integers, exactly
        np.testing.assert_array_equal(scale[fits], s[fits])  # on the source's scale
        assert not np.any(scale[~fits] == s[~fits])  # the others keep TensorFlow's grid
        held_channels += int(fits.sum())
    assert kept["channels"] == held_channels and kept["kept"] == len([g for g in grids if g in weights])
    held = np.load(sources / "held.npy")
    twin = _twin(sources / source, held)
    ours = sqnr_db(twin, _bundle(tmp_path / "grids", held))
    # the default: TensorFlow's own per-channel grid, max|w| / 127, on the same weights
    monkeypatch.setattr("edgepack.converter.onnx.translate._grids", lambda grids, mode: None)
    assert "source_weight_grids" not in _convert(sources / source, tmp_path / "default", mode, sources)
    default = sqnr_db(twin, _bundle(tmp_path / "default", held))
    assert ours >= default + gain, (ours, default)
