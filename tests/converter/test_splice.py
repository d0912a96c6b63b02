"""Budget candidates spliced from the base quantization and the calibrated float model: the same
models the quantizer makes for the same denylist, without quantizing again."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A small conv net with what the quantizer treats specially: a concatenation (one scale for its
    inputs), a sigmoid (a fixed output grid), a residual add, and a dense head; its calibrated model."""
    import tf_keras as keras

    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same")(a)
    g = keras.layers.Activation("sigmoid")(b)
    m = keras.layers.Multiply()([b, g])  # SiLU, decomposed
    r = keras.layers.Add()([a, m])
    c = keras.layers.Concatenate()([r, keras.layers.Conv2D(4, 1, activation="relu")(r)])
    p = keras.layers.GlobalAveragePooling2D()(c)
    out = keras.layers.Dense(5, name="head")(p)
    path = tmp_path_factory.mktemp("splice") / "net.h5"
    keras.Model(inp, out).save(path)
    x = np.random.default_rng(0).random((48, 16, 16, 3), dtype=np.float32)
    kept = []
    base = convert_to_tflite(load_model(path), QuantizeMode.INT8, Dataset({"image": x[:32]}),
                             keep_calibrated=kept.append)
    return kept[0], base, x[32:]


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(i["index"], list(x.shape))
    it.allocate_tensors()
    scale, zero = i["quantization"]
    it.set_tensor(i["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    it.invoke()
    scale, zero = o["quantization"]
    return (it.get_tensor(o["index"]).astype(np.float32) - zero) * scale


def _sqnr(got: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / max(float(np.sum((got - ref) ** 2)), 1e-30)))


def test_a_spliced_candidate_is_what_the_quantizer_makes_for_the_same_denylist(net):
    from edgepack.converter.splice import Splicer
    from edgepack.tflite_model import read_tflite

    cal, base, x = net
    nodes = [node for _, node, _, _ in cal.ops()]
    splicer = Splicer(cal.model, base)
    assert splicer.ok
    sets = [[n] for n in nodes] + [nodes[a:a + 3] for a in range(0, len(nodes), 3)] + [nodes, nodes[::2]]
    for deny in sets:
        quantized, spliced = cal.quantize(denylist=deny), splicer.build(deny)
        # the same outputs to the bit (on real detectors a few random sets differ, by the scale an int8
        # neighbour of a float op gets: 22-40 dB apart, equal figures against the float model)
        assert np.array_equal(_run(quantized, x), _run(spliced, x)), deny
        a, b = read_tflite(quantized), read_tflite(spliced)
        # the same ops, float and int8, and no tensor or weight left behind (the names a little longer)
        assert a.op_counts == b.op_counts, deny
        assert [a.tensor(i).name for i in a.outputs] == [b.tensor(i).name for i in b.outputs], deny  # what apps look up
        assert sorted(t.dtype for t in a.tensors) == sorted(t.dtype for t in b.tensors), deny
        assert 0 <= len(spliced) - len(quantized) < 1024, (deny, len(quantized), len(spliced))
    # every op float: the float model's outputs (the input's int8 rounding aside)
    assert _sqnr(_run(splicer.build(nodes), x), _run(cal.quantize(denylist=nodes), x)) > 100


def test_a_base_from_another_model_is_not_spliced(net, tmp_path):
    import tf_keras as keras

    from edgepack.calibration import Dataset
    from edgepack.converter.splice import Splicer
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    cal, base, _ = net
    assert Splicer(cal.model, cal.quantize(denylist=[cal.ops()[0][1]])).ok  # added quantize/dequantize ops align
    inp = keras.Input((4,), name="x")
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inp))).save(tmp_path / "o.h5")
    other = convert_to_tflite(load_model(tmp_path / "o.h5"), QuantizeMode.INT8,
                              Dataset({"x": np.random.default_rng(0).random((8, 4), dtype=np.float32)}))
    splicer = Splicer(cal.model, other)
    assert not splicer.ok and splicer.build([cal.ops()[0][1]]) is None  # the search then asks the quantizer
