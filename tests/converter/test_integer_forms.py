"""Integer forms of a prepared ONNX graph: an STFT magnitude ``sqrt(re**2 + im**2)`` as a max over
rotations folded into the STFT conv (int8 SQNR with and without it, no float op left), and the
float-exact Gather / reflect-Pad rewrites TFLite Micro's int16 kernels need (int16x8 runs on TFLM)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import api
from edgepack.converter.onnx import integer_forms
from edgepack.packaging.manifest import read_manifest
from edgepack.validation.metrics import sqnr_db as _sqnr
from tests.converter.stream_builders import run_first_io, stft_basis, tone_windows

N, HOP, F, SAMPLES = 32, 16, 17, 320  # window, hop, frequency bins (N / 2 + 1), samples per input


def _spectrogram_model(path, *, head: bool = True):
    """x [1, 1, SAMPLES] -> STFT conv -> magnitude -> (1x1 conv + ReLU head) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(stft_basis(N, F), "basis"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, F, 1)).astype(np.float32), "head_w"),
             numpy_helper.from_array(np.float32(2.0), "two")]
    for name, value in (("re_s", 0), ("re_e", F), ("im_s", F), ("im_e", 2 * F), ("axis", 1)):
        inits.append(numpy_helper.from_array(np.array([value], np.int64), name))
    nodes = [helper.make_node("Conv", ["x", "basis"], ["spec"], kernel_shape=[N], strides=[HOP]),
             helper.make_node("Slice", ["spec", "re_s", "re_e", "axis"], ["re"]),
             helper.make_node("Slice", ["spec", "im_s", "im_e", "axis"], ["im"]),
             helper.make_node("Pow", ["re", "two"], ["re2"]),
             helper.make_node("Mul", ["im", "im"], ["im2"]),
             helper.make_node("Add", ["re2", "im2"], ["power"]),
             helper.make_node("Sqrt", ["power"], ["mag" if head else "y"])]
    if head:
        nodes += [helper.make_node("Conv", ["mag", "head_w"], ["h"], kernel_shape=[1]),
                  helper.make_node("Relu", ["h"], ["y"])]
    frames = (SAMPLES - N) // HOP + 1
    graph = helper.make_graph(nodes, "spectrogram", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, SAMPLES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8 if head else F, frames])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _audio(n: int, seed: int) -> np.ndarray:
    """Tones and noise from loud to 60 dB quieter: the range a VAD hears."""
    return tone_windows(n, SAMPLES, seed, decades=3, low_hz=200)[:, None, :]


def _run(proto_or_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": s[None]})[0] for s in x])


def test_magnitude_as_max_over_rotations_is_within_its_bound(tmp_path):
    path = _spectrogram_model(tmp_path / "mag.onnx", head=False)
    proto = onnx.load(str(path))
    assert integer_forms.stft_magnitudes(proto) == 1
    kinds = [n.op_type for n in proto.graph.node]
    assert "Sqrt" not in kinds and "Pow" not in kinds and kinds.count("Max") == integer_forms.ROTATIONS - 1
    onnx.checker.check_model(proto)
    x = _audio(16, seed=1)
    want, got = _run(path, x), _run(proto, x)
    bound = np.tan(np.pi / (4 * integer_forms.ROTATIONS)) ** 2  # (1 - cos) / (1 + cos) of pi / 2K: 0.97 %
    rel = np.abs(got - want) / np.maximum(want, 1e-6)
    assert rel[want > 1e-3].max() <= bound * 1.01, rel.max()  # (float32 rounding on top)
    assert rel[want > 1e-3].max() > bound / 4  # the form is an approximation, and a tight one


def test_magnitude_form_only_where_the_magnitude_cannot_stay_float(tmp_path):
    path = _spectrogram_model(tmp_path / "mag.onnx")
    wants = {("int8-float-io", False): {}, ("int8", False): {}, ("none", True): {},
             ("int8", True): {"stft_magnitudes": 1}, ("int16x8", False): {"stft_magnitudes": 1}}
    for (mode, integer_only), want in wants.items():
        assert integer_forms.apply(onnx.load(str(path)), mode, integer_only=integer_only) == want, mode
    assert integer_forms.apply(onnx.load(str(path)), "int16x8", magnitude=False) == {}  # --no-ptq stft-magnitude


def _int8(bundle, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    from edgepack.runtimes.litert import quantize

    outs, interp = run_first_io(bundle, x, lambda s, i: quantize(s[None].transpose(i.perm or range(3)), i).reshape(i.shape))
    kinds = [op["op_name"] for op in interp._get_ops_details()]
    return outs.reshape(len(x), -1), kinds


def test_full_int8_spectrogram_reads_better_with_the_magnitude_form(tmp_path):
    path = _spectrogram_model(tmp_path / "spec.onnx")
    calib, held = _audio(100, seed=2), _audio(40, seed=3)
    np.save(tmp_path / "calib.npy", calib[:, 0][:, None])
    ref = _run(path, held).reshape(len(held), -1)
    api.convert(model=path, output=tmp_path / "forms", quantize="int8", calibration=tmp_path / "calib.npy",
                target="cortex-m4")
    graph = read_manifest(tmp_path / "forms").extras["graph"]
    assert graph["integer_forms"]["stft_magnitudes"] == 1 and graph["integer_forms"]["max_rel_change"] < 0.01
    with_forms, kinds = _int8(tmp_path / "forms", held)
    assert "SQRT" not in kinds and "DEQUANTIZE" not in kinds and {"ABS", "MAXIMUM"} <= set(kinds)

    api.convert(model=path, output=tmp_path / "plain", quantize="int8", calibration=tmp_path / "calib.npy",
                target="cortex-m4", no_ptq=["stft-magnitude"])  # the switch that turns it off
    plain, plain_kinds = _int8(tmp_path / "plain", held)
    assert "SQRT" in plain_kinds and "integer_forms" not in read_manifest(tmp_path / "plain").extras["graph"]
    # per sample: the quiet ones are where squaring on one int8 grid loses everything
    per_with = [_sqnr(r, o) for r, o in zip(ref, with_forms)]
    per_plain = [_sqnr(r, o) for r, o in zip(ref, plain)]
    print("int8 worst-sample SQNR with the form", min(per_with), "without", min(per_plain),
          "whole", _sqnr(ref, with_forms), _sqnr(ref, plain))
    assert np.median(per_with) > np.median(per_plain) + 3, (np.median(per_with), np.median(per_plain))


def _state_model(path):
    """x [1, 1, SAMPLES] reflect-padded, state [2, 4] read by constant Gathers (silero's front and state)."""
    inits = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 24], np.int64), "pads"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"), numpy_helper.from_array(np.array(1, np.int64), "i1"),
             numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 1, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect"),
             helper.make_node("Conv", ["xp", "w"], ["c"], kernel_shape=[8], strides=[8]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Gather", ["state", "i0"], ["h"], axis=0),
             helper.make_node("Gather", ["state", "i1"], ["cs"], axis=0),
             helper.make_node("Mul", ["h", "cs"], ["hc"]),
             helper.make_node("Add", ["m", "hc"], ["y"])]
    graph = helper.make_graph(nodes, "front", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, SAMPLES]),
                                               helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_gather_and_reflect_pad_forms_are_exact_and_run_int16_on_tflm(tmp_path, monkeypatch):
    import onnxruntime as ort

    path = _state_model(tmp_path / "front.onnx")
    proto = onnx.load(str(path))
    assert integer_forms.constant_gathers(proto) == 2 and integer_forms.reflect_pads(proto) == 1
    assert not {"Gather", "Pad"} & {n.op_type for n in proto.graph.node}
    rng = np.random.default_rng(4)
    for _ in range(4):
        feed = {"x": rng.normal(0, 1, (1, 1, SAMPLES)).astype(np.float32),
                "state": rng.normal(0, 1, (2, 4)).astype(np.float32)}
        a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        b = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        np.testing.assert_array_equal(a, b)  # float-exact

    from edgepack.runtimes import tflm

    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (100, 1, SAMPLES)).astype(np.float32),
             state=rng.normal(0, 1, (100, 2, 4)).astype(np.float32))
    api.convert(model=path, output=tmp_path / "i16", quantize="int16x8", calibration=tmp_path / "calib.npz")
    model = (tmp_path / "i16" / "model.tflite").read_bytes()
    assert tflm.measure_arena(model, 2).total > 0  # TFLM allocates and invokes it
    monkeypatch.setattr(integer_forms, "apply", lambda proto, mode, **kw: {})
    api.convert(model=path, output=tmp_path / "plain", quantize="int16x8", calibration=tmp_path / "calib.npz")
    with pytest.raises(Exception, match="(?i)int16|invoke|not supported"):
        tflm.measure_arena((tmp_path / "plain" / "model.tflite").read_bytes(), 2)
