"""Already-quantized ONNX models: QDQ graphs (onnxruntime's quantize_static, made inside the test) convert
with their activation ranges kept; dynamically quantized ones (ConvInteger, MatMulInteger) become float
ops with the same effective weights."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.validation.metrics import sqnr_db
from tests.converter.onnx_builders import bundle_nchw as _bundle
from tests.converter.onnx_builders import calibration_reader, small_cnn
from tests.converter.onnx_builders import ort_per_sample as _ort


def _float_model(path):
    rng = np.random.default_rng(0)
    return small_cnn(path, {"w1": rng.normal(0, .4, (8, 3, 3, 3)), "b1": rng.normal(0, .1, 8),
                            "w2": rng.normal(0, .3, (8, 8, 3, 3)), "b2": rng.normal(0, .1, 8),
                            "wf": rng.normal(0, .5, (8, 5))})


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    d = tmp_path_factory.mktemp("quantized")
    float_path = _float_model(d / "float.onnx")
    rng = np.random.default_rng(1)
    calib, held = rng.random((64, 3, 12, 12)).astype(np.float32), rng.random((40, 3, 12, 12)).astype(np.float32)
    np.save(d / "calib.npy", calib)
    np.save(d / "held.npy", held)

    quantize_static(str(float_path), str(d / "qdq.onnx"), calibration_reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    quantize_static(str(float_path), str(d / "qoperator.onnx"), calibration_reader(calib),
                    quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(str(float_path), str(d / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul"])
    return d


def test_qdq_model_keeps_its_ranges_and_reads_like_onnxruntime(quantized, tmp_path):
    res = api.convert(model=quantized / "qdq.onnx", output=tmp_path / "b", quantize="int8-float-io",
                      calibration=quantized / "calib.npy")
    convert = next(s for s in res.manifest.stages if s.name == "convert").detail
    assert convert["graph"]["dequantized"]["qdq_pairs_removed"] >= 5
    kept = convert["source_ranges"]
    assert kept["kept"] >= 3 and kept["kept"] <= kept["recorded"]  # the manifest says how many
    held = np.load(quantized / "held.npy")
    reference = _ort(quantized / "float.onnx", held)
    # onnxruntime's QDQ graph run as written: its fused int8 kernels' arithmetic differs between CPUs
    ours = sqnr_db(reference, _bundle(tmp_path / "b", held))
    theirs = sqnr_db(reference, _ort(quantized / "qdq.onnx", held, as_written=True))
    assert abs(ours - theirs) <= 1.0, (ours, theirs)
    assert sqnr_db(_ort(quantized / "qdq.onnx", held), _bundle(tmp_path / "b", held)) > 35


def test_qoperator_model_becomes_qdq_then_float_with_its_relus_and_ranges(quantized, tmp_path):
    import onnx

    ops = {n.op_type for n in onnx.load(str(quantized / "qoperator.onnx")).graph.node}
    assert {"QLinearConv", "QLinearMatMul", "QLinearGlobalAveragePool"} <= ops
    res = api.convert(model=quantized / "qoperator.onnx", output=tmp_path / "b", quantize="int8-float-io",
                      calibration=quantized / "calib.npy")
    convert = next(s for s in res.manifest.stages if s.name == "convert").detail
    assert convert["graph"]["dequantized"]["qoperators_rewritten"] == 4 and convert["source_ranges"]["kept"] >= 3
    held = np.load(quantized / "held.npy")
    reference = _ort(quantized / "float.onnx", held)
    ours = sqnr_db(reference, _bundle(tmp_path / "b", held))
    theirs = sqnr_db(reference, _ort(quantized / "qoperator.onnx", held))
    assert ours >= theirs - 1.0, (ours, theirs)  # the ReLUs fused into the output ranges are kept


def test_dynamic_quantized_model_converts_with_its_effective_weights(quantized, tmp_path):
    import onnx

    assert {n.op_type for n in onnx.load(str(quantized / "dynamic.onnx")).graph.node} >= {"ConvInteger", "MatMulInteger"}
    res = api.convert(model=quantized / "dynamic.onnx", output=tmp_path / "b", quantize="none")
    graph = next(s for s in res.manifest.stages if s.name == "convert").detail["graph"]
    assert graph["dequantized"]["integer_ops_rewritten"] == 3
    held = np.load(quantized / "held.npy")
    out = _bundle(tmp_path / "b", held)
    assert sqnr_db(_ort(quantized / "float.onnx", held), out) > 35  # the float model, up to 8-bit weights
    assert sqnr_db(_ort(quantized / "dynamic.onnx", held), out) > 30  # onnxruntime also rounds activations
