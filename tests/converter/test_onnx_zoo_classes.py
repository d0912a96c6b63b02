"""The classes of failure real production ONNX models hit (issue 10), each reproduced on a tiny graph
built here: untracked onnx2tf variables, native crashes in calibration, already-quantized models,
onnx2tf option fallbacks, stateful/scalar inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import api
from edgepack.errors import ConversionError


def _save(nodes, inputs, outputs, inits, path: Path, opset: int = 13, domains=()) -> Path:
    import onnx

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _f(name: str, arr) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _run_bundle(bundle: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float bundle's outputs in ONNX layout and order."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.packaging.manifest import read_manifest

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    for t in m.inputs:
        x = np.transpose(feeds[t.name], t.perm) if t.perm else feeds[t.name]
        interp.set_tensor(t.index, np.asarray(x).reshape(t.shape).astype(t.dtype))
    interp.invoke()
    outs = []
    for t in m.outputs:
        y = interp.get_tensor(t.index)
        outs.append(np.transpose(y, np.argsort(t.perm)) if t.perm else y)
    return outs


def _onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgepack.formats.detect import load_model

    return load_model(path).model(feeds)


def test_grouped_conv_variables_survive_the_saved_model(tmp_path):
    """paddle2onnx models (layout_cdla): onnx2tf builds a grouped Conv as a Keras Conv2D whose
    kernel no object tracks; saving it used to fail with "untracked resource ... /kernel"."""
    rng = np.random.default_rng(0)
    path = _save([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1], name="p2o.Conv.3")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 6])],
                 [_f("w", rng.normal(0, 0.5, (6, 2, 3, 3))), _f("b", rng.normal(0, 0.1, 6))], tmp_path / "g.onnx")
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    feeds = {"x": rng.random((1, 4, 6, 6), dtype=np.float32)}
    np.testing.assert_allclose(_run_bundle(tmp_path / "b", feeds)[0], _onnxruntime(path, feeds)[0], atol=1e-5)


def _bidirectional_lstm(path: Path, steps: int = 8, feat: int = 4, hidden: int = 8) -> Path:
    """A CRNN's recurrent tail (ddddocr's common.onnx): NCHW features -> [T, 1, C] -> bidirectional LSTM."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["img"], ["t"], perm=[3, 0, 1, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["x"]),
             helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=hidden,
                              direction="bidirectional", name="lstm")]
    inits = [_f("W", rng.normal(0, .3, (2, 4 * hidden, feat))), _f("R", rng.normal(0, .3, (2, 4 * hidden, hidden))),
             _f("B", np.zeros((2, 8 * hidden))), _f("h0", np.zeros((2, 1, hidden))), _f("c0", np.zeros((2, 1, hidden))),
             numpy_helper.from_array(np.array([steps, 1, feat], np.int64), "shape")]
    return _save(nodes, [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, feat, 1, steps])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 2, 1, hidden])], inits, path)


def test_native_crash_in_int8_calibration_is_one_line_and_keeps_the_old_bundle(tmp_path):
    """TensorFlow's int8 calibration segfaults on this graph (as on common.onnx) when the LSTM stays a
    WHILE loop (forced here: enable_rnn_unroll=false turns the automatic fallback off); edgepack
    survives, names the signal, the likely op and what to try, and leaves the existing bundle alone."""
    from click.testing import CliRunner

    from edgepack.cli import main

    path = _bidirectional_lstm(tmp_path / "crnn.onnx")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((20, 4, 1, 8), dtype=np.float32))
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    before = (tmp_path / "b" / "model.tflite").read_bytes()
    with pytest.raises(ConversionError) as info:
        api.convert(model=path, output=tmp_path / "b", quantize="int8", calibration=tmp_path / "cal.npy", force=True,
                    onnx2tf_options={"enable_rnn_unroll": False})
    msg = str(info.value)
    assert "crashed during int8 calibration (SIGSEGV)" in msg and "WHILE" in msg
    assert "--quantize int16x8" in msg and "\n" not in msg
    assert (tmp_path / "b" / "model.tflite").read_bytes() == before
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "c"), "--quantize", "int8",
                                    "--calibration", str(tmp_path / "cal.npy"), "--onnx2tf-option",
                                    "enable_rnn_unroll=false"])
    assert res.exit_code == 1 and "SIGSEGV" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()


def test_int8_unrolls_the_lstm_first(tmp_path):
    """By default an int8 conversion does not meet the crash: the LSTM is unrolled first (no WHILE
    left), calibration runs, the manifest records the option set, and int8 follows onnxruntime."""
    path = _bidirectional_lstm(tmp_path / "crnn.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cal.npy", rng.random((20, 4, 1, 8), dtype=np.float32))
    api.convert(model=path, output=tmp_path / "b", quantize="int8-float-io", calibration=tmp_path / "cal.npy")
    convert = _convert_stage(tmp_path / "b")
    assert convert["onnx2tf_option_set"] == "rnn_unroll"
    assert convert["onnx2tf_options"] == {"enable_rnn_unroll": True}
    assert convert["onnx2tf_failed_sets"] == []  # no WHILE translated and crashed first
    feeds = {"img": rng.random((1, 4, 1, 8), dtype=np.float32)}
    got, want = _run_bundle(tmp_path / "b", feeds)[0], _onnxruntime(path, feeds)[0]
    assert got.shape == want.shape
    cosine = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.97 and np.abs(got - want).max() < 0.25 * np.abs(want).max()


def test_already_quantized_model_is_refused_in_one_line(tmp_path):
    """common_old.onnx (onnxruntime's quantize_dynamic): ConvInteger and friends."""
    from click.testing import CliRunner

    from edgepack.cli import main

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, "width"])  # refused before --input-shape
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("ConvInteger", ["xq", "wq", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    wq = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.uint8), "wq")
    path = _save(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [wq],
                 tmp_path / "q.onnx", opset=12)
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "b"), "--quantize", "none"])
    assert res.exit_code == 1
    assert "this ONNX model is already quantized (ConvInteger); export the float model" in res.output
    assert len(res.output.strip().splitlines()) == 1


def _acos_model(path: Path) -> Path:
    """TFLite has no Acos builtin: onnx2tf's default translation fails in the TFLite converter."""
    nodes = [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Acos", ["h"], ["y"])]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [_f("half", [0.5])], path)


def _convert_stage(bundle: Path) -> dict:
    from edgepack.packaging.manifest import read_manifest

    return next(s for s in read_manifest(bundle).stages if s.name == "convert").detail


def test_fallback_option_set_is_kept_recorded_and_matches_onnxruntime(tmp_path):
    path = _acos_model(tmp_path / "acos.onnx")
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    detail = _convert_stage(tmp_path / "b")
    assert detail["onnx2tf_option_set"] == "pseudo_operators"
    assert "acos" in detail["onnx2tf_options"]["replace_to_pseudo_operators"]
    assert detail["onnx2tf_failed_sets"][0].startswith("default: TFLite converter failed")
    feeds = {"x": np.linspace(-1, 1, 8, dtype=np.float32)[None]}
    np.testing.assert_allclose(_run_bundle(tmp_path / "b", feeds)[0], _onnxruntime(path, feeds)[0], atol=1e-4)


def test_default_translation_records_no_options_and_probes_real_calibration_data(tmp_path):
    from tests.converter.onnx_builders import classifier

    path = classifier(tmp_path / "c.onnx")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32))
    api.convert(model=path, output=tmp_path / "b", quantize="int8", calibration=tmp_path / "cal.npy")
    detail = _convert_stage(tmp_path / "b")
    assert detail["onnx2tf_option_set"] == "default" and detail["onnx2tf_options"] == {}
    assert detail["probe_input"] == "calibration" and detail["probe_max_rel_error"] < 1e-4


def test_forced_onnx2tf_option_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from edgepack.cli import main

    path = _acos_model(tmp_path / "acos.onnx")
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "b"), "--quantize", "none",
                               "--onnx2tf-option", 'replace_to_pseudo_operators=["acos"]'])
    assert res.exit_code == 0, res.output
    assert _convert_stage(tmp_path / "b")["onnx2tf_option_set"] == "forced"
    # a forced set turns the fallbacks off: the default translation's own failure is reported
    res = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "c"), "--quantize", "none",
                               "--onnx2tf-option", "disable_group_convolution=true"])
    assert res.exit_code == 1 and "'tf.Acos' op is neither a custom op nor a flex op" in res.output
    assert "also tried" not in res.output


@pytest.mark.parametrize(("option", "code", "said"), [
    ("no_such_option=1", 2, "not an onnx2tf.convert() option"),
    ("output_folder_path=/tmp/x", 2, "edgepack sets this onnx2tf option itself"),
    ("novalue", 2, "expected KEY=VALUE"),
])
def test_bad_onnx2tf_option_is_one_line_usage_error(tmp_path, option, code, said):
    from click.testing import CliRunner

    from edgepack.cli import main

    path = _acos_model(tmp_path / "acos.onnx")
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "b"), "--quantize", "none",
                                    "--onnx2tf-option", option])
    assert res.exit_code == code and said in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_stateful_model_with_scalar_input_keeps_names_and_follows_named_batch(tmp_path):
    """silero-vad's interface: ``input`` [batch, samples], ``state`` [2, batch, 128] in and ``stateN``
    out, a scalar int64 ``sr``. Only ``input``'s samples need --input-shape: ``state`` follows the
    named ``batch`` dimension."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["srf", "k"], ["gain"]),
             helper.make_node("MatMul", ["input", "w"], ["feat"]),
             helper.make_node("Mul", ["feat", "gain"], ["scaled"]),
             helper.make_node("Add", ["state", "scaled"], ["stateN"]),
             helper.make_node("ReduceMean", ["stateN"], ["mean"], axes=[0, 2], keepdims=0),
             helper.make_node("Sigmoid", ["mean"], ["prob"]),
             helper.make_node("Unsqueeze", ["prob", "one"], ["output"])]
    path = _save(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
                         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
                         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
                  helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4])],
                 [_f("w", rng.normal(0, .3, (16, 4))), _f("k", [1 / 16000]),
                  numpy_helper.from_array(np.array([1], np.int64), "one")], tmp_path / "vad.onnx")
    m = api.convert(model=path, output=tmp_path / "b", quantize="none", input_shapes=["input:1x16"]).manifest
    assert [t.name for t in m.inputs] == ["input", "state", "sr"]
    assert [t.name for t in m.outputs] == ["output", "stateN"]
    feeds = {"input": rng.random((1, 16), dtype=np.float32), "state": rng.random((2, 1, 4), dtype=np.float32),
             "sr": np.array(16000, np.int64)}
    for got, ref in zip(_run_bundle(tmp_path / "b", feeds), _onnxruntime(path, feeds)):
        np.testing.assert_allclose(got.reshape(ref.shape), ref, atol=1e-5)


def test_onnxruntime_probe_failure_stays_off_the_terminal(tmp_path, capfd):
    """silero_vad.onnx: the probe's integer inputs (ones) take a branch onnxruntime fails in, and
    onnxruntime logs that natively; the log is captured, the conversion goes on without a probe."""
    nodes = [helper.make_node("Gather", ["table", "idx"], ["row"], axis=0),
             helper.make_node("Add", ["row", "x"], ["y"])]
    path = _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                         helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                 [_f("table", np.arange(4, dtype=np.float32)[None])], tmp_path / "gather.onnx")
    capfd.readouterr()
    try:
        api.convert(model=path, output=tmp_path / "b", quantize="none")
    except ConversionError as err:  # whether onnx2tf translates it is not the point here
        assert "\n" not in str(err)
    assert "onnxruntime" not in capfd.readouterr().err


def test_large_mismatch_with_onnxruntime_is_a_failed_translation(tmp_path):
    """Node-suite test_concat_3d_axis_1: onnx2tf concatenates two channels-last 3-D inputs on the
    wrong axis. Its graph differs from onnxruntime by far more than rounding: no bundle, one line.
    (A forced option set turns the fallbacks off; keep_input_layout fixes this graph:
    test_onnx_functions.test_inputs_that_are_not_images_keep_their_layout.)"""
    path = _save([helper.make_node("Concat", ["a", "b"], ["y"], axis=1)],
                 [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2, 2]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2, 2])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 2])], [], tmp_path / "cat.onnx")
    with pytest.raises(ConversionError, match="differs from onnxruntime by"):
        api.convert(model=path, output=tmp_path / "b", quantize="none", onnx2tf_options={"disable_strict_mode": False})
    assert not (tmp_path / "b").exists()


def test_rnn_unroll_comes_first_in_calibrated_modes_and_only_after_a_crash_in_float_ones():
    """Unrolling grows the graph: a float conversion of a recurrent model (silero's If/STFT) does not
    try it after a translation failure, only after a native crash in calibration, once; a calibrated
    conversion tries it first (the WHILE form crashes TensorFlow's calibration)."""
    from edgepack.converter.onnx import fallbacks

    assert [c.name for c in fallbacks.candidates(None, {"LSTM", "Conv"})] == ["default", "keep_input_layout"]
    assert [c.name for c in fallbacks.candidates(None, {"LSTM", "Conv"}, calibrated=True)] == [
        "rnn_unroll", "default", "keep_input_layout"]
    assert [c.name for c in fallbacks.candidates(None, {"Conv"}, calibrated=True)] == ["default", "keep_input_layout"]
    assert [c.name for c in fallbacks.candidates({"enable_rnn_unroll": False}, {"LSTM"}, calibrated=True)] == ["forced"]
    assert [c.name for c in fallbacks.after_crash({"LSTM", "Conv"}, {"default"})] == ["rnn_unroll"]
    assert fallbacks.after_crash({"LSTM"}, {"default", "rnn_unroll"}) == []
    assert fallbacks.after_crash({"Conv"}, {"default"}) == []
