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
    from edgepack.converter.load import load_model

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
