"""The ptq algorithms on tiny ONNX models that carry the defect each one fixes: int8 SQNR against
onnxruntime with and without the algorithm (the same calibration data), and the manifest record."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.packaging.manifest import read_manifest
from tests.optimize.ptq_builders import biased_rounding, coherent_rounding, hard_swish_net, imbalanced_pair


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - out) ** 2), 1e-30)))


def _run_int8(bundle, x: np.ndarray) -> np.ndarray:
    """The bundle on LiteRT, NCHW in and out (the manifest's layout permutations)."""
    from ai_edge_litert.interpreter import Interpreter

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    perm_in, perm_out = m.inputs[0].perm, m.outputs[0].perm
    outs = []
    for sample in x:
        xs = sample[None].transpose(perm_in)
        s, z = i["quantization"]
        interp.set_tensor(i["index"], np.clip(np.round(xs / s) + z, -128, 127).astype(np.int8))
        interp.invoke()
        s, z = o["quantization"]
        y = (interp.get_tensor(o["index"]).astype(np.float32) - z) * s
        outs.append(y.transpose(np.argsort(perm_out))[0])
    return np.stack(outs)


def _compare(tmp_path, model, calib: np.ndarray, held: np.ndarray, algorithm: str):
    """(SQNR with the algorithm, SQNR without it, the manifest of the bundle with it)."""
    import onnxruntime as ort

    np.save(tmp_path / "calib.npy", calib)
    ref = np.concatenate([ort.InferenceSession(str(model)).run(None, {"image": s[None]})[0] for s in held])
    others = [a for a in ("fuse", "equalize", "split", "learned-rounding", "bias-correction", "ranges",
                          "int8-bias-correction") if a != algorithm]
    results = {}
    for label, on, off in (("with", [algorithm], others), ("without", [], ["all"])):
        out = tmp_path / label
        api.convert(model=model, output=out, quantize="int8", calibration=tmp_path / "calib.npy", ptq=on,
                    no_ptq=off)
        results[label] = (_sqnr(ref, _run_int8(out, held)), read_manifest(out))
    return results["with"][0], results["without"][0], results["with"][1], results["without"][1]


def test_fusing_decomposed_hard_swish_reaches_the_int8_kernel(tmp_path):
    model = hard_swish_net(tmp_path / "hs.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (132, 3, 12, 12)).astype(np.float32)
    fused, plain, m, m_plain = _compare(tmp_path, model, x[:100], x[100:], "fuse")
    rec = m.extras["ptq"]["fuse"]
    assert rec["fused"] == 6 and rec["nodes_removed"] == 5 * 3 + 1 and rec["float_max_rel_difference"] < 1e-4
    assert rec["opset"] == 14  # lifted from 13: HardSwish is an opset-14 op
    assert m.ops.get("HARD_SWISH") == 6 and "HARD_SWISH" not in m_plain.ops
    assert set(m.ops) == {"CONV_2D", "HARD_SWISH"}  # nothing else, nothing float
    assert m.quantization.mode == "int8"
    assert fused > 20 and fused > plain + 10, (fused, plain)


def test_equalizing_a_100x_channel_imbalance(tmp_path):
    model = imbalanced_pair(tmp_path / "pair.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (132, 3, 12, 12)).astype(np.float32)
    eq, plain, m, _ = _compare(tmp_path, model, x[:100], x[100:], "equalize")
    rec = m.extras["ptq"]["equalize"]
    assert rec["pairs"] == 1 and rec["layers"][0]["activation"] == "Relu"
    assert rec["layers"][0]["scale_ratio"] > 20 and rec["float_max_rel_difference"] < 1e-4
    assert eq > plain + 6, (eq, plain)


def test_bias_correction_removes_a_biased_rounding_error(tmp_path):
    model = biased_rounding(tmp_path / "dw.onnx")
    rng = np.random.default_rng(2)
    x = (4 + rng.normal(0, 1, (132, 8, 10, 10))).astype(np.float32)
    corrected, plain, m, _ = _compare(tmp_path, model, x[:100], x[100:], "bias-correction")
    rec = m.extras["ptq"]["bias-correction"]
    assert rec["layers"] == 1 and rec["samples"] == 32 and rec["granularity"] == "per-channel"
    assert rec["max_abs_shift"] > 0.05  # 9 weights each 0.45 step low, inputs near 4: about 0.13
    assert corrected > plain + 3, (corrected, plain)


def _coherent_inputs(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.normal(2, 1, (n, 1, 6, 6))
    return (base + rng.normal(0, 0.05, (n, 16, 6, 6))).astype(np.float32)


def test_learned_rounding_beats_nearest_rounding(tmp_path):
    model = coherent_rounding(tmp_path / "pw.onnx")
    x = _coherent_inputs(132)
    learned, nearest, m, _ = _compare(tmp_path, model, x[:100], x[100:], "learned-rounding")
    rec = m.extras["ptq"]["learned-rounding"]
    assert rec["layers"] == 1 and rec["largest"][0]["layer"] == "pointwise"
    assert 0.2 < rec["mean_moved_from_nearest"] < 0.8  # some weights rounded up instead of down
    assert learned > nearest + 3, (learned, nearest)  # 42.4 -> 47.1 dB when measured


def test_learned_rounding_lands_on_the_converters_int8_grid_exactly(tmp_path):
    """The converter's int8 weights are exactly the integers chosen: its per-channel scale
    (max|w| / 127) is the grid the rounding used, because each channel's largest weight is kept."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.optimize.ptq.onnx_graph import GraphIndex
    from edgepack.optimize.ptq.rounding import round_onnx

    model = coherent_rounding(tmp_path / "pw.onnx")
    x = _coherent_inputs(132)
    rounded, rec = round_onnx(onnx.load(str(model)), [{"image": s[None]} for s in x[:32]])
    w = GraphIndex.build(rounded.graph).value(rounded.graph.node[0].input[1]).reshape(4, 16)
    peak = np.abs(w).max(axis=1, keepdims=True)
    chosen = np.round(w / (peak / 127)).astype(np.int64)
    nearest = np.round(GraphIndex.build(onnx.load(str(model)).graph).value("w").reshape(4, 16) / (peak / 127))
    assert (chosen != nearest).sum() > 8  # not the nearest rounding
    onnx.save(rounded, str(tmp_path / "rounded.onnx"))
    np.save(tmp_path / "calib.npy", x[:100])
    api.convert(model=tmp_path / "rounded.onnx", output=tmp_path / "b", quantize="int8",
                calibration=tmp_path / "calib.npy", no_ptq=["all"])
    interp = Interpreter(model_path=str(tmp_path / "b" / "model.tflite"))
    filters = [t for t in interp.get_tensor_details() if t["dtype"] == np.int8 and tuple(t["shape"]) == (4, 1, 1, 16)]
    assert len(filters) == 1
    q = interp.get_tensor(filters[0]["index"]).reshape(4, 16).astype(np.int64)
    np.testing.assert_array_equal(q, chosen)
    np.testing.assert_allclose(filters[0]["quantization_parameters"]["scales"], peak.ravel() / 127, rtol=1e-6)


@pytest.mark.parametrize("bad", ["fusion", "everything"])
def test_no_ptq_names_the_algorithms(tmp_path, bad):
    from edgepack.errors import OptionError

    with pytest.raises(OptionError, match="--no-ptq"):
        api.convert(model=tmp_path / "m.onnx", output=tmp_path / "o", no_ptq=[bad])


def test_default_algorithms_and_the_flags_that_change_them():
    from edgepack.request import QuantizeOptions

    assert QuantizeOptions().ptq_algorithms == ["fuse", "equalize", "split", "ranges", "lstm-float", "stft-magnitude"]
    assert QuantizeOptions(ptq=("all",), no_ptq=("fuse",)).ptq_algorithms == [
        "equalize", "split", "learned-rounding", "bias-correction", "ranges", "int8-bias-correction", "lstm-float",
        "stft-magnitude"]
    assert QuantizeOptions(no_ptq=("all",)).ptq_algorithms == []


def test_cli_ptq_flags_refuse_unknown_names(tmp_path):
    from click.testing import CliRunner

    from edgepack.cli import main

    res = CliRunner().invoke(main, ["convert", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o"), "--ptq", "nope"])
    assert res.exit_code == 2 and "--ptq" in res.output and "learned-rounding" in res.output
    assert "Traceback" not in res.output
