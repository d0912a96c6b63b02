"""benchmarks/qdq_sensitivity.py: the two grid edits it measures a peer's QDQ model with, on a model onnxruntime
quantizes here (Conv -> Sigmoid, concatenated with the Conv's output)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks import qdq_sensitivity as qs


def _qdq_model(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 1, (4, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
         helper.make_node("Concat", ["c", "s"], ["y"], axis=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], [w])
    src = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(src))
    samples = [{"x": rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "q.onnx"
    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    return out, samples


def _grid(model, tensor: str) -> tuple[float, int]:
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(init[q.input[1]]), int(init[q.input[2]])


def test_sigmoid_outputs_go_on_tflites_logistic_grid_and_concat_inputs_on_the_output_grid(tmp_path):
    import onnxruntime as ort

    path, samples = _qdq_model(tmp_path)
    before = onnx.load(str(path))
    assert _grid(before, "s") != (1 / 256, -128)
    y = next(n.output[0] for n in before.graph.node if n.op_type == "Concat")  # the graph output's quantize input
    assert _grid(before, "s") != _grid(before, y)

    sig = onnx.load(str(path))
    assert qs.sigmoid_on_tflite_grid(sig) == 2  # its QuantizeLinear and DequantizeLinear
    assert _grid(sig, "s") == (1 / 256, -128)
    cat = onnx.load(str(path))
    assert qs.concat_inputs_on_output_grid(cat) == 2
    q_s = next(n for n in cat.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "s")
    q_y = next(n for n in cat.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == y)
    assert list(q_s.input[1:]) == list(q_y.input[1:])

    def run(data: bytes) -> np.ndarray:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, s)[0] for s in samples])

    made = run(path.read_bytes())
    for variant in qs.VARIANTS[1:]:
        moved = run(qs.edited(path, variant))
        assert moved.shape == made.shape and not np.array_equal(moved, made), variant
    assert np.array_equal(run(qs.edited(path, "as made")), made)
