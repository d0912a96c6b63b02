"""Integer forms on silero's sequence-model front (several windows per call): a reflect Pad on both
sides of a 2-D input, an Unsqueeze, the STFT Conv, its halves sliced along the channels and then
along the frames (the first frame dropped), and the magnitude. int16x8 for cortex-m4 converts
(onnx2tf translates the rewrites faithfully), runs on TFLite Micro and reads like the float model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepack import api
from edgepack.converter.onnx import integer_forms
from edgepack.packaging.manifest import read_manifest
from edgepack.validation.metrics import sqnr_db
from tests.converter.stream_builders import run_first_io, save_graph, stft_basis, tone_windows

N, HOP, F, WINDOWS, SAMPLES, PAD = 32, 16, 17, 4, 96, 16  # STFT window, hop, bins; windows per call


def _sequence_front(path):
    """x [WINDOWS, SAMPLES] -> reflect pad both sides -> Unsqueeze -> STFT conv -> halves[:, :, 1:]
    -> magnitude -> 1x1 conv -> y [WINDOWS, 8, frames - 1] (silero_vad_16k_sequence's front)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(stft_basis(N, F), "basis"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, F, 1)).astype(np.float32), "head_w"),
             numpy_helper.from_array(np.float32(2.0), "two"),
             numpy_helper.from_array(np.array([0, PAD, 0, PAD], np.int64), "pads")]
    for name, value in (("re_s", 0), ("re_e", F), ("im_s", F), ("im_e", 2 * F), ("one", 1), ("two_i", 2),
                        ("big", 1 << 30)):
        inits.append(numpy_helper.from_array(np.array([value], np.int64), name))
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect"),
             helper.make_node("Unsqueeze", ["xp", "one"], ["xu"]),
             helper.make_node("Conv", ["xu", "basis"], ["spec"], kernel_shape=[N], strides=[HOP]),
             helper.make_node("Slice", ["spec", "re_s", "re_e", "one"], ["re_all"]),
             helper.make_node("Slice", ["re_all", "one", "big", "two_i"], ["re"]),
             helper.make_node("Slice", ["spec", "im_s", "im_e", "one"], ["im_all"]),
             helper.make_node("Slice", ["im_all", "one", "big", "two_i"], ["im"]),
             helper.make_node("Pow", ["re", "two"], ["re2"]),
             helper.make_node("Pow", ["im", "two"], ["im2"]),
             helper.make_node("Add", ["re2", "im2"], ["power"]),
             helper.make_node("Sqrt", ["power"], ["mag"]),
             helper.make_node("Conv", ["mag", "head_w"], ["y"], kernel_shape=[1])]
    frames = (SAMPLES + 2 * PAD - N) // HOP + 1
    graph = helper.make_graph(nodes, "sequence_front",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [WINDOWS, SAMPLES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [WINDOWS, 8, frames - 1])], inits)
    return save_graph(graph, path, opset=13)


def _audio(n: int, seed: int) -> np.ndarray:
    return tone_windows(n * WINDOWS, SAMPLES, seed, decades=2, low_hz=300).reshape(n, WINDOWS, SAMPLES)


def _litert(bundle, x: np.ndarray) -> np.ndarray:
    return run_first_io(bundle, x, lambda s, i: s.reshape(i.shape))[0]


def test_reflect_pad_on_both_sides_is_float_exact_for_every_pad_it_takes():
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    for n in (2, 3, 8):
        for before in range(n):
            for after in range(n):
                graph = helper.make_graph(
                    [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], "pad",
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, n])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                    [numpy_helper.from_array(np.array([0, before, 0, after], np.int64), "pads")])
                proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                proto.ir_version = 8
                if not integer_forms.reflect_pads(proto):
                    assert before == n - 1 > 1 or not before + after  # the one pad left as it is
                    continue
                # no Slice ends at index 0 or -1 with a negative step (onnx2tf reads those as "to the start")
                consts = integer_forms._consts(proto.graph)
                for node in (n for n in proto.graph.node if n.op_type == "Slice"):
                    if int(consts[node.input[4]][0]) < 0:
                        assert int(consts[node.input[2]][0]) > 0 or int(consts[node.input[2]][0]) < -n
                x = rng.normal(size=(3, n)).astype(np.float32)
                got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                    None, {"x": x})[0]
                np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (before, after)), mode="reflect"))


def test_sequence_front_converts_int16x8_for_cortex_m4_and_runs_on_tflm(tmp_path):
    import onnxruntime as ort

    from edgepack.runtimes import tflm

    path = _sequence_front(tmp_path / "front.onnx")
    proto = onnx.load(str(path))
    assert integer_forms.apply(proto, "int16x8") == {"stft_magnitudes": 1, "reflect_pads": 1}
    assert not {"Sqrt", "Pad"} & {n.op_type for n in proto.graph.node}
    np.save(tmp_path / "calib.npy", _audio(100, seed=2))
    api.convert(model=path, output=tmp_path / "i16", quantize="int16x8", target="cortex-m4",
                calibration=tmp_path / "calib.npy")
    extras = read_manifest(tmp_path / "i16").extras["graph"]["integer_forms"]
    assert extras["stft_magnitudes"] == 1 and extras["reflect_pads"] == 1
    model = (tmp_path / "i16" / "model.tflite").read_bytes()
    assert tflm.measure_arena(model, 1).total > 0  # TFLM allocates and invokes it
    x = _audio(8, seed=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.stack([sess.run(None, {"x": s})[0] for s in x]).astype(np.float64)
    got = _litert(tmp_path / "i16", x).reshape(want.shape)
    sqnr = sqnr_db(want, got)
    print("int16x8 SQNR vs float", sqnr)
    assert sqnr > 30, sqnr  # the magnitude form (~1 %) and int16 activations: a faithful translation
