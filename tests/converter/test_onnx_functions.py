"""ONNX function ops expanded into their bodies (CastLike, Swish, LayerNormalization over axis 0),
Constant nodes with scalar attributes, and the keep_input_layout fallback for inputs that are not
images: each graph here failed in onnx2tf before, and now matches onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgepack import api
from edgepack.packaging.manifest import read_manifest


def _save(nodes, inputs, outputs, path: Path, *, opset: int, inits=()) -> Path:
    import onnx

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _vi(name: str, shape: list[int]):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(bundle: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float bundle's outputs (LiteRT) in ONNX layout."""
    from ai_edge_litert.interpreter import Interpreter

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    for t in m.inputs:
        interp.set_tensor(t.index, np.transpose(feeds[t.name], t.perm) if t.perm else feeds[t.name])
    interp.invoke()
    outs = [interp.get_tensor(t.index) for t in m.outputs]
    return [np.transpose(y, np.argsort(t.perm)) if t.perm else y for t, y in zip(m.outputs, outs)]


def _bundle_vs_onnxruntime(path: Path, bundle: Path, feeds: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the float bundle and onnxruntime."""
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _run(bundle, feeds)
    assert [y.shape for y in got] == [w.shape for w in want]
    return max(float(np.max(np.abs(y - w))) for y, w in zip(got, want))


def _stages(bundle: Path) -> dict[str, dict]:
    return {s.name: s.detail for s in read_manifest(bundle).stages}


def _x(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def test_castlike_and_swish_become_their_onnx_bodies(tmp_path):
    # onnx2tf has no translation for either; CastLike's body is a Cast, Swish's x * sigmoid(alpha x)
    like = numpy_helper.from_array(np.zeros(1, np.float32), "like")
    nodes = [helper.make_node("CastLike", ["x", "like"], ["c"]),
             helper.make_node("Swish", ["c"], ["y"], alpha=1.5)]
    path = _save(nodes, [_vi("x", [1, 6])], [_vi("y", [1, 6])], tmp_path / "m.onnx", opset=24, inits=[like])
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    assert _stages(tmp_path / "b")["graph"]["expanded_functions"] == 3  # and the CastLike in Swish's body
    x = _x(1, 6)
    want = x / (1 + np.exp(-1.5 * x))  # onnxruntime 1.23 refuses opset 24 files: Swish's definition
    np.testing.assert_allclose(_run(tmp_path / "b", {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_constant_with_a_scalar_attribute_translates(tmp_path):
    # exporters and ONNX's own function bodies write Constant(value_float=...): onnx2tf read only `value`
    nodes = [helper.make_node("Constant", [], ["k"], value_float=2.5),
             helper.make_node("Constant", [], ["s"], value_ints=[1, 6]),
             helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Mul", ["r", "k"], ["y"])]
    path = _save(nodes, [_vi("x", [6])], [_vi("y", [1, 6])], tmp_path / "m.onnx", opset=13)
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    assert _bundle_vs_onnxruntime(path, tmp_path / "b", {"x": _x(6)}) < 1e-6


def test_layer_normalization_over_axis_0_is_retried_expanded(tmp_path):
    # onnx2tf's LayerNormalization fails over axis 0 of a 2-D tensor; its ONNX body translates
    scale = numpy_helper.from_array(np.linspace(0.5, 2, 12, dtype=np.float32).reshape(3, 4), "scale")
    bias = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "bias")
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=0)]
    path = _save(nodes, [_vi("x", [3, 4])], [_vi("y", [3, 4])], tmp_path / "m.onnx", opset=17, inits=[scale, bias])
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    stages = _stages(tmp_path / "b")
    assert stages["convert"]["graph"]["expanded_functions"] == 1
    assert stages["convert"]["onnx2tf_failed_sets"][0].startswith("functions as ops: onnx2tf failed at LayerNorm")
    assert _bundle_vs_onnxruntime(path, tmp_path / "b", {"x": _x(3, 4)}) < 1e-4


def test_inputs_that_are_not_images_keep_their_layout(tmp_path):
    # onnx2tf transposes 3-D inputs to channels-last; a concatenation on axis 1 then joins the wrong axis
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    path = _save(nodes, [_vi("a", [2, 2, 2]), _vi("b", [2, 2, 2])], [_vi("y", [2, 4, 2])], tmp_path / "m.onnx",
                 opset=13)
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    convert = _stages(tmp_path / "b")["convert"]
    assert convert["onnx2tf_option_set"] == "keep_input_layout"
    assert convert["onnx2tf_options"]["keep_shape_absolutely_input_names"] == ["a", "b"]
    assert all(t.perm is None for t in read_manifest(tmp_path / "b").inputs)
    assert _bundle_vs_onnxruntime(path, tmp_path / "b", {"a": _x(2, 2, 2), "b": _x(2, 2, 2) + 3}) < 1e-6


def test_small_integer_arithmetic_is_computed_in_int32(tmp_path):
    # TFLite has no float-model kernel for ADD on int8 or LESS on uint8; ONNX's int8 sums wrap around
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Less", ["u", "v"], ["lt"])]
    ins = [helper.make_tensor_value_info(n, t, [2, 3]) for n, t in
           (("a", TensorProto.INT8), ("b", TensorProto.INT8), ("u", TensorProto.UINT8), ("v", TensorProto.UINT8))]
    outs = [helper.make_tensor_value_info("s", TensorProto.INT8, [2, 3]),
            helper.make_tensor_value_info("lt", TensorProto.BOOL, [2, 3])]
    path = _save(nodes, ins, outs, tmp_path / "m.onnx", opset=14)
    api.convert(model=path, output=tmp_path / "b", quantize="none")
    assert _stages(tmp_path / "b")["graph"]["widened_integer_ops"] == 2
    a = np.array([[100, -100, 5], [127, -128, 0]], np.int8)
    u = np.array([[0, 200, 255], [7, 8, 9]], np.uint8)
    feeds = {"a": a, "b": np.full((2, 3), 100, np.int8), "u": u, "v": np.full((2, 3), 8, np.uint8)}
    by_name = dict(zip([t.name for t in read_manifest(tmp_path / "b").outputs], _run(tmp_path / "b", feeds)))
    np.testing.assert_array_equal(by_name["s"], (a.astype(np.int32) + 100).astype(np.int8))  # 100 + 100 = -56
    np.testing.assert_array_equal(by_name["lt"], u < 8)
