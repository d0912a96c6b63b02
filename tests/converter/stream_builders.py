"""Tiny exported-style ONNX graphs for graph preparation and streaming: an ``If`` on a scalar input
with a Conv in each branch (silero's sample-rate switch), a name TensorFlow refuses, and an LSTM whose
[2, batch, H] state is an input and an output (silero's decoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 16


def save_graph(graph, path: Path, opset: int = OPSET) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgepack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


_save = save_graph


def _f(name: str, arr) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _i(name: str, arr) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, np.int64), name)


def if_conv(path: Path) -> Path:
    """x [1, 2, 16], sr (int64 scalar): ``If(sr == 16000)`` picks a Conv (kernel 3) whose branch holds
    another If on the input's length (``Shape`` arithmetic: onnxruntime evaluates it), else a Conv of
    kernel 5. Output y [1, 4, 16]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    y_info = helper.make_tensor_value_info("branch_y", TensorProto.FLOAT, None)
    inner_then = helper.make_graph([helper.make_node("Relu", ["conv3"], ["inner_y"])], "long",
                                   [], [helper.make_tensor_value_info("inner_y", TensorProto.FLOAT, None)])
    inner_else = helper.make_graph([helper.make_node("Neg", ["conv3"], ["inner_n"])], "short",
                                   [], [helper.make_tensor_value_info("inner_n", TensorProto.FLOAT, None)])
    then = helper.make_graph([
        helper.make_node("Conv", ["x", "w3", "b3"], ["conv3"], pads=[1, 1]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "two"], ["length"], axis=0),
        helper.make_node("Greater", ["length", "eight"], ["is_long"]),
        helper.make_node("If", ["is_long"], ["branch_y"], then_branch=inner_then, else_branch=inner_else),
    ], "rate16k", [], [y_info], [_f("w3", rng.normal(0, 0.5, (4, 2, 3))), _f("b3", rng.normal(0, 0.1, 4)),
                                 _i("two", 2), _i("eight", 8)])
    other = helper.make_graph([helper.make_node("Conv", ["x", "w5", "b5"], ["branch_y"], pads=[2, 2])], "rate8k",
                              [], [y_info], [_f("w5", rng.normal(0, 0.5, (4, 2, 5))), _f("b5", rng.normal(0, 0.1, 4))])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
         helper.make_node("If", ["is_16k"], ["y"], then_branch=then, else_branch=other)],
        "if_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
        [_i("rate", 16000)])
    return _save(graph, path)


def at_names(path: Path) -> Path:
    """A PP-OCR-style classifier head whose node and tensor are named ``Softmax@0`` (TensorFlow refuses
    '@' in a scope name); the graph's own input and output names are plain."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits@0"], name="MatMul@0"),
         helper.make_node("Softmax", ["logits@0"], ["probs"], name="Softmax@0", axis=-1)],
        "at_names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])], [_f("w", rng.normal(0, 1, (6, 3)))])
    return _save(graph, path)


def lstm_state(path: Path, features: int = 8, hidden: int = 4) -> Path:
    """silero's decoder in small: x [1, F] and state [2, batch, H] in; prob [1, 1] and stateN [2, batch, H]
    out, an ONNX LSTM in between (state[0] = h, state[1] = c)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Gather", ["state", "zero"], ["h0"], axis=0),
        helper.make_node("Gather", ["state", "one"], ["c0"], axis=0),
        helper.make_node("Unsqueeze", ["x", "axis0"], ["x_seq"]),
        helper.make_node("Unsqueeze", ["h0", "axis0"], ["h0_d"]),
        helper.make_node("Unsqueeze", ["c0", "axis0"], ["c0_d"]),
        helper.make_node("LSTM", ["x_seq", "W", "R", "B", "", "h0_d", "c0_d"], ["Y", "Y_h", "Y_c"],
                         hidden_size=hidden),
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w_out"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Concat", ["Y_h", "Y_c"], ["stateN"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "lstm_state",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", hidden])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", hidden])],
        [_f("W", rng.normal(0, 0.6, (1, 4 * hidden, features))), _f("R", rng.normal(0, 0.6, (1, 4 * hidden, hidden))),
         _f("B", rng.normal(0, 0.2, (1, 8 * hidden))), _f("w_out", rng.normal(0, 1.0, (hidden, 1))),
         _i("zero", 0), _i("one", 1), _i("axis0", [0])])
    return _save(graph, path)


def stream_frames(model: Path, frames: int, seed: int = 0, features: int = 8) -> dict[str, np.ndarray]:
    """``frames`` frames of a smooth signal and the state onnxruntime carries through them (for
    calibration: every (x, state) pair is one the model really meets)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    t = np.arange(frames * features, dtype=np.float32) / 7.0
    signal = (np.sin(t) * (1 + np.sin(t / 13)) + rng.normal(0, 0.2, t.shape)).astype(np.float32)
    xs = signal.reshape(frames, features)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    hidden = sess.get_inputs()[1].shape[2]
    state = np.zeros((2, 1, hidden), np.float32)
    states = []
    for x in xs:
        states.append(state)
        state = sess.run(["stateN"], {"x": x[None], "state": state})[0]
    return {"x": xs, "state": np.stack(states)}


def tone_windows(count: int, samples: int, seed: int, *, decades: float, low_hz: float) -> np.ndarray:
    """``count`` windows of a tone (low_hz..6 kHz at 16 kHz) plus noise, each from loud to ``decades`` x 20 dB
    quieter: the range a VAD hears. (count, samples) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    return np.stack([10 ** rng.uniform(-decades, 0) * (np.sin(2 * np.pi * rng.uniform(low_hz, 6000) * t)
                                                       + 0.3 * rng.normal(0, 1, samples))
                     for _ in range(count)]).astype(np.float32)


def run_first_io(bundle: Path, xs, feed) -> tuple[np.ndarray, object]:
    """A bundle's first output on LiteRT for each of ``xs``: ``feed(x, input_info)`` makes the input tensor;
    the output dequantized and given back in the source layout. Returns (outputs, the interpreter)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.packaging.manifest import read_manifest
    from edgepack.runtimes.litert import dequantize

    m = read_manifest(bundle)
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    i, o = m.inputs[0], m.outputs[0]
    outs = []
    for x in xs:
        interp.set_tensor(i.index, feed(x, i))
        interp.invoke()
        y = dequantize(interp.get_tensor(o.index), o)
        outs.append(y.transpose(np.argsort(o.perm)) if o.perm else y)
    return np.stack(outs), interp


def stft_basis(n: int, bins: int) -> np.ndarray:
    """A Hann-windowed STFT as conv weights [2 * bins, 1, n]: the real parts, then the imaginary ones (silero's
    STFT conv)."""
    k, f = np.arange(n), np.arange(bins)[:, None]
    window = np.hanning(n)
    re, im = np.cos(2 * np.pi * f * k / n) * window, -np.sin(2 * np.pi * f * k / n) * window
    return np.concatenate([re, im])[:, None, :].astype(np.float32)
