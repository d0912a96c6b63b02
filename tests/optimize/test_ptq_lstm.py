"""lstm-float: an unrolled LSTM's gates and cell kept float in an int8 model (as onnxruntime's static
quantization runs them), the projections int8; a tiny bidirectional ONNX LSTM, int8 SQNR against
onnxruntime with and without it."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.converter.recurrent import cell_nodes
from edgepack.packaging.manifest import read_manifest

STEPS, FEATURES, HIDDEN, CLASSES = 8, 6, 16, 5


def _bilstm(path):
    """x [1, STEPS, FEATURES] -> bidirectional LSTM -> MatMul -> [STEPS, 1, CLASSES] (ddddocr's head, small)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = {"W": rng.normal(0, 0.5, (2, 4 * HIDDEN, FEATURES)), "R": rng.normal(0, 0.3, (2, 4 * HIDDEN, HIDDEN)),
              "B": rng.normal(0, 0.2, (2, 8 * HIDDEN)), "h0": np.zeros((2, 1, HIDDEN)), "c0": np.zeros((2, 1, HIDDEN)),
              "Wo": rng.normal(0, 0.3, (2 * HIDDEN, CLASSES))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([STEPS, 1, 2 * HIDDEN], np.int64), "shape"))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], name="lstm",
                              hidden_size=HIDDEN, direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["yt", "shape"], ["yr"]),
             helper.make_node("MatMul", ["yr", "Wo"], ["out"])]
    graph = helper.make_graph(nodes, "bilstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, FEATURES])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [STEPS, 1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _sqnr_and_float_ops(bundle, model, held: np.ndarray) -> tuple[float, int]:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    sess = ort.InferenceSession(str(model))
    ref = np.stack([sess.run(None, {"x": s[None]})[0] for s in held])
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    perm = read_manifest(bundle).inputs[0].perm
    outs = []
    for s in held:
        interp.set_tensor(i["index"], s[None].transpose(perm).astype(np.float32))
        interp.invoke()
        outs.append(interp.get_tensor(o["index"]).reshape(ref.shape[1:]))
    out = np.stack(outs)
    sqnr = float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - out) ** 2)))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    floats = sum(1 for op in interp._get_ops_details() if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
                 and op["outputs"].size and dtypes.get(int(op["outputs"][0])) == np.float32)
    return sqnr, floats


def test_lstm_internals_stay_float_and_read_better(tmp_path):
    model = _bilstm(tmp_path / "bilstm.onnx")
    x = np.random.default_rng(1).normal(0, 1, (132, 1, STEPS, FEATURES)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:100, 0])
    results = {}
    for label, off in (("with", []), ("without", ["lstm-float"])):
        api.convert(model=model, output=tmp_path / label, quantize="int8-float-io", calibration=tmp_path / "calib.npy",
                    no_ptq=off)
        results[label] = _sqnr_and_float_ops(tmp_path / label, model, x[100:, 0])
    (sqnr, floats), (sqnr_int8, floats_int8) = results["with"], results["without"]
    record = read_manifest(tmp_path / "with").extras["ptq"]["lstm-float"]
    # 2 directions x 8 steps: gates' ADD/SPLIT, 3 LOGISTIC, 2 TANH, 3 MUL, the cell's ADD (first steps fold a zero state)
    assert record["float_ops"] >= 200 and floats >= record["float_ops"]
    assert floats_int8 <= 5  # without it: the float output and little else
    assert "lstm-float" not in read_manifest(tmp_path / "without").extras["ptq"]
    # measured 33.8 against 29.2 dB (31.3 against 23.4 before the converter requantized the backward
    # direction's REVERSE_V2, edgepack.converter.copy_scales: no mis-scaled copy is left to keep float)
    assert sqnr > sqnr_int8 + 3, (sqnr, sqnr_int8)
    assert record["scale_mismatches"] == 0
    # the projections' weights int8 (hybrid FULLY_CONNECTED): no float32 copy of them
    assert record["hybrid_weights"] == 4  # input and recurrent weights of two directions
    size = (tmp_path / "with" / "model.tflite").stat().st_size
    assert size < 1.1 * (tmp_path / "without" / "model.tflite").stat().st_size


def test_a_silu_is_not_a_recurrent_cell():
    # conv -> LOGISTIC -> MUL(conv, sigmoid) -> ADD: gated, but no TANH candidate: nothing kept float
    ops = [("CONV_2D", "c", [0, 1], [2]), ("LOGISTIC", "s", [2], [3]), ("MUL", "m", [2, 3], [4]),
           ("ADD", "a", [4, 0], [5]), ("TANH", "t", [5], [6])]
    assert cell_nodes(ops) == []
    gate = ops + [("LOGISTIC", "g", [5], [7]), ("MUL", "ig", [7, 6], [8])]
    assert cell_nodes(gate) == ["s", "m", "a", "t", "g", "ig"]


def test_integer_only_targets_keep_the_cells_int8_and_say_so(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = _bilstm(tmp_path / "bilstm.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).normal(0, 1, (100, STEPS, FEATURES)).astype(np.float32))
    api.convert(model=model, output=tmp_path / "mcu", quantize="int8", calibration=tmp_path / "calib.npy",
                target="cortex-m4")
    interp = Interpreter(model_path=str(tmp_path / "mcu" / "model.tflite"))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    gates = [dtypes[int(op["outputs"][0])] for op in interp._get_ops_details() if op["op_name"] in ("LOGISTIC", "TANH")]
    assert len(gates) >= 64 and all(d == np.int8 for d in gates)
    assert "runs integer ops only" in read_manifest(tmp_path / "mcu").extras["ptq"]["lstm-float"]["skipped"]


def test_ranges_and_int8_biases_leave_the_float_cells_alone(tmp_path):
    """lstm-float runs first: ``ranges`` and ``int8-bias-correction`` are judged on the model with its
    cells float and choose nothing inside them (on ddddocr's recognizer ``ranges`` used to spend its
    choices on 751 cell tensors the bundle then kept float: the same figures with and without it); the
    bundle keeps the cells float and the projections hybrid after the edits."""
    model = _bilstm(tmp_path / "bilstm.onnx")
    x = np.random.default_rng(1).normal(0, 1, (100, STEPS, FEATURES)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    records = {}
    for label, off in (("cells float", []), ("cells int8", ["lstm-float"])):
        api.convert(model=model, output=tmp_path / label, quantize="int8-float-io", calibration=tmp_path / "calib.npy",
                    ptq=["ranges", "int8-bias-correction"], no_ptq=off)
        records[label] = read_manifest(tmp_path / label).extras["ptq"]
    floats, ints = records["cells float"], records["cells int8"]
    assert floats["lstm-float"]["float_ops"] >= 200 and floats["lstm-float"]["hybrid_weights"] == 4
    # the cells' gate/state tensors are no candidates (a few dozen activations are left: the sequence in and out)
    assert floats["ranges"]["groups"] < ints["ranges"]["groups"] / 4, (floats["ranges"], ints["ranges"])
    assert floats["ranges"]["calibration_error_db_after"] <= floats["ranges"]["calibration_error_db_before"]
    assert floats["int8-bias-correction"]["samples"] == 24  # ran on the cells-float model (nothing biased to fix)
    size = (tmp_path / "cells float" / "model.tflite").stat().st_size
    assert size < 1.1 * (tmp_path / "cells int8" / "model.tflite").stat().st_size  # the projections' weights int8


@pytest.fixture(scope="module")
def state_lstm(tmp_path_factory):
    from tests.converter.stream_builders import lstm_state, stream_frames

    d = tmp_path_factory.mktemp("state_lstm")
    model = lstm_state(d / "lstm.onnx")
    np.savez(d / "calib.npz", **stream_frames(model, 120, seed=1))
    np.savez(d / "frames.npz", x=np.stack([stream_frames(model, 30, seed=s)["x"] for s in (7, 8)]))
    return d, model


def _stream_state_sqnr(d, model, bundle) -> float:
    report = api.validate_stream(bundle=bundle, data=d / "frames.npz", reference=model)
    return report.outputs["litert"]["stateN"]["median_sqnr_db"]


def test_float_io_keeps_the_carried_state_float_from_input_to_output(state_lstm):
    """int8-float-io: the state's slices into the cell and the concatenation out of it stay float (onnxruntime
    feeds its LSTM the float state); full int8 has the state on one int8 grid at its I/O and keeps it there."""
    from edgepack.packaging.manifest import read_manifest
    from edgepack.tflite_model import read_tflite

    d, model = state_lstm
    for mode in ("int8-float-io", "int8"):
        api.convert(model=model, output=d / mode, quantize=mode, calibration=d / "calib.npz", calibration_samples=120)
    record = read_manifest(d / "int8-float-io").extras["ptq"]["lstm-float"]
    assert record["state_path_ops"] >= 3  # the two Gathers of h and c, the Concat of stateN
    assert "state_path_ops" not in read_manifest(d / "int8").extras["ptq"]["lstm-float"]
    info = read_tflite(d / "int8-float-io" / "model.tflite")
    state_in = next(i for i in info.inputs if info.tensor(i).name.endswith("state:0"))
    readers = [k for k, (ins, _) in zip(info.ops, info.op_io) if state_in in ins]
    assert readers and "QUANTIZE" not in readers  # read float: never put on an int8 grid
    state_out = next(o for o in info.outputs if info.tensor(o).dtype == "float32" and info.tensor(o).shape[0] == 2)
    producer = next(k for k, (_, outs) in zip(info.ops, info.op_io) if state_out in outs)
    assert producer != "DEQUANTIZE"
    # the carried state, streamed: float I/O's against the full int8 one's (h and c on one grid)
    assert _stream_state_sqnr(d, model, d / "int8-float-io") > _stream_state_sqnr(d, model, d / "int8") + 10
    # and ranges are chosen: the state no longer rides an int8 grid from call to call
    assert "skipped" not in read_manifest(d / "int8-float-io").extras["ptq"]["ranges"]
    assert "int8 recurrent state" in read_manifest(d / "int8").extras["ptq"]["ranges"]["skipped"]


def test_state_path_nodes_follow_only_moves_between_the_io_and_the_cell():
    from edgepack.converter.recurrent import state_path_nodes

    # state(0) -> GATHER -> h(1) -> MUL (cell) -> h1(3) -> RESHAPE -> r(4) -> CONCATENATION with the conv's y(12)
    # -> out(5); x(10) -> GATHER (constant index) -> g(11) -> CONV_2D -> y(12): no cell after it; r(4) -> RELU
    ops = [("GATHER", "g_state", [0, 90], [1]), ("GATHER", "g_x", [10, 91], [11]), ("CONV_2D", "conv", [11, 92], [12]),
           ("MUL", "cell", [1, 12], [3]), ("RESHAPE", "reshape", [3, 93], [4]), ("RELU", "relu", [4], [6]),
           ("CONCATENATION", "concat", [4, 12], [5])]
    assert state_path_nodes(ops, [0, 10], [5, 6], ["cell"]) == ["g_state"]  # not a move of the state alone
    # the concatenation of the cell's outputs only: it and the reshape before it carry the state out
    ops[-1] = ("CONCATENATION", "concat", [4, 3], [5])
    assert state_path_nodes(ops, [0, 10], [5, 6], ["cell"]) == ["g_state", "reshape", "concat"]
