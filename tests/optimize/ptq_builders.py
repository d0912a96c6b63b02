"""Tiny ONNX models, each carrying the defect one ptq algorithm fixes (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.converter.onnx_builders import _init, _save


def _io(name: str, shape: list[int]):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def hard_swish_net(path: Path, depth: int = 6) -> Path:
    """``depth`` 3x3 convs, each followed by hard-swish as paddle2onnx writes it (PP-LCNet):
    ``x * clip(x + [3], 0, 6) / [6]`` with one-element constants, the last one as ``x *
    HardSigmoid(x)``; pre-activations spread over about -14..10. Translated op by op, TensorFlow's
    converter does not recognise the pattern (the one-element constants broadcast), and the chain of
    int8 ADD/MUL ops loses the signal."""
    from onnx import helper

    rng = np.random.default_rng(3)
    c = 8
    inits = [_init("three", np.array([3.0])), _init("zero", np.array(0.0)), _init("six", np.array(6.0)),
             _init("six_t", np.array([6.0]))]
    nodes, prev, cin = [], "image", 3
    for i in range(depth):
        a = f"a{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [a], pads=[1, 1, 1, 1], name=f"conv{i}"))
        if i < depth - 1:
            nodes += [helper.make_node("Add", [a, "three"], [f"p{i}"], name=f"add{i}"),
                      helper.make_node("Clip", [f"p{i}", "zero", "six"], [f"r{i}"], name=f"clip{i}"),
                      helper.make_node("Mul", [a, f"r{i}"], [f"m{i}"], name=f"mul{i}"),
                      helper.make_node("Div", [f"m{i}", "six_t"], [f"h{i}"], name=f"div{i}")]
        else:
            nodes += [helper.make_node("HardSigmoid", [a], [f"s{i}"], alpha=1 / 6, beta=0.5, name=f"hsig{i}"),
                      helper.make_node("Mul", [a, f"s{i}"], [f"h{i}"], name=f"mul{i}")]
        inits += [_init(f"w{i}", rng.normal(0, 6 / np.sqrt(cin * 9), (c, cin, 3, 3))),
                  _init(f"b{i}", rng.normal(-2, 1, c))]
        prev, cin = f"h{i}", c
    nodes.append(helper.make_node("Conv", [prev, "w_out"], ["out"], name="conv_out"))
    inits.append(_init("w_out", rng.normal(0, 0.5, (4, c, 1, 1))))
    graph = helper.make_graph(nodes, "hard_swish_net", [_io("image", [1, 3, 12, 12])], [_io("out", [1, 4, 12, 12])],
                              inits)
    return _save(graph, path)


def imbalanced_pair(path: Path) -> Path:
    """Conv -> Relu -> Conv where conv1's output channels differ 100x in range and conv2 makes up
    for it: the int8 grid of the tensor between them is set by the large channels, and the small
    ones (as important to the output) get a few levels."""
    from onnx import helper

    rng = np.random.default_rng(4)
    c = 8
    gain = np.where(np.arange(c) % 2 == 0, 100.0, 1.0)
    w1 = rng.normal(0, 0.5, (c, 3, 3, 3)) * gain[:, None, None, None]
    w2 = rng.normal(0, 0.5, (4, c, 3, 3)) / gain[None, :, None, None]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["out"], pads=[1, 1, 1, 1], name="conv2")]
    inits = [_init("w1", w1), _init("b1", rng.normal(0, 0.1, c) * gain), _init("w2", w2), _init("b2", np.zeros(4))]
    graph = helper.make_graph(nodes, "imbalanced_pair", [_io("image", [1, 3, 12, 12])], [_io("out", [1, 4, 12, 12])],
                              inits)
    return _save(graph, path)


def biased_rounding(path: Path) -> Path:
    """A depthwise 3x3 conv whose weights all sit 0.45 of an int8 step above the grid: per-channel
    int8 rounds each of the 9 down, and on inputs far from zero the output shifts by about 4 steps
    per channel, the same sign on every pixel (a biased error that rounding does not average out)."""
    from onnx import helper

    rng = np.random.default_rng(5)
    c = 8
    steps = rng.integers(20, 100, (c, 1, 3, 3)).astype(np.float64)
    steps[:, 0, 0, 0] = 127  # each channel's largest weight: the grid is max|w| / 127 = 1/127 exactly
    w = np.where(steps == 127, 127, steps + 0.45) / 127
    nodes = [helper.make_node("Conv", ["image", "w"], ["out"], group=c, name="depthwise")]
    graph = helper.make_graph(nodes, "biased_rounding", [_io("image", [1, c, 10, 10])], [_io("out", [1, c, 8, 8])],
                              [_init("w", w)])
    return _save(graph, path)


def coherent_rounding(path: Path) -> Path:
    """A 1x1 conv over 16 input channels that carry nearly the same signal, every weight 0.4 of an
    int8 step above the grid: nearest rounding rounds all 16 down and their errors add up (16 x 0.4
    steps); rounding some up instead cancels them."""
    from onnx import helper

    rng = np.random.default_rng(6)
    cin, cout = 16, 4
    steps = rng.integers(10, 100, (cout, cin, 1, 1)).astype(np.float64)
    steps[:, 0] = 127
    w = np.where(steps == 127, 127, steps + 0.4) / 127
    nodes = [helper.make_node("Conv", ["image", "w"], ["out"], name="pointwise")]
    graph = helper.make_graph(nodes, "coherent_rounding", [_io("image", [1, cin, 6, 6])], [_io("out", [1, cout, 6, 6])],
                              [_init("w", w)])
    return _save(graph, path)


def depthwise_imbalance(path: Path) -> Path:
    """Conv -> HardSwish -> depthwise Conv -> HardSwish -> 1x1 Conv (PP-LCNet's first block, opset 14),
    where two of conv1's eight output channels stay below 0.2 while the others reach about 30, and the
    depthwise kernels of those two are 200x the others': their part of the output is as large, and the
    int8 grid of the tensor between the convolutions (set by the wide channels) rounds them to 0 or 1 step.
    Equalization cannot rescale them: hard-swish is not positively homogeneous."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(6)
    c = 8
    small = np.arange(c) < 2
    w1 = rng.normal(0, 1.5, (c, 3, 3, 3)) * np.where(small, 0.005, 1.0)[:, None, None, None]
    b1 = np.where(small, 0.0, rng.normal(2, 1, c))
    w2 = rng.normal(0, 0.3, (c, 1, 3, 3)) * np.where(small, 200.0, 1.0)[:, None, None, None]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("HardSwish", ["a"], ["h"], name="hswish1"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["d"], pads=[1, 1, 1, 1], group=c, name="dw"),
             helper.make_node("HardSwish", ["d"], ["g"], name="hswish2"),
             helper.make_node("Conv", ["g", "w3"], ["out"], name="pw")]
    inits = [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", np.zeros(c)),
             _init("w3", rng.normal(0, 0.5, (4, c, 1, 1)))]
    graph = helper.make_graph(nodes, "depthwise_imbalance", [_io("image", [1, 3, 12, 12])],
                              [_io("out", [1, 4, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="edgepack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def biased_depthwise_keras():
    """A Keras depthwise conv whose every weight sits 0.45 of an int8 step above the grid (each channel's
    largest weight is 127 steps, so the grid is 1/127), and 132 inputs near 4: a biased rounding error."""
    import keras

    inp = keras.Input((10, 10, 8), name="image")
    out = keras.layers.DepthwiseConv2D(3, name="depthwise")(inp)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(5)
    steps = rng.integers(20, 100, (3, 3, 8, 1)).astype(np.float64)
    steps[0, 0] = 127
    w = (np.where(steps == 127, 127, steps + 0.45) / 127).astype(np.float32)
    model.get_layer("depthwise").set_weights([w, np.zeros(8, np.float32)])
    return model, (4 + rng.normal(0, 1, (132, 10, 10, 8))).astype(np.float32)
