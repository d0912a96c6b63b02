"""A float op's output read by a CONCATENATION and by a RELU: the RELU gets it on its own grid."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """x -> tanh(dense) 'a' in (-1, 1) and 50 * dense 'b': concat([a, b]) out, relu(a) -> dense out."""
    import tf_keras as keras

    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    keras.utils.set_random_seed(3)
    x = keras.Input((8,), name="x")
    a = keras.layers.Activation("tanh", name="a")(keras.layers.Dense(16, name="d1")(x))
    b = keras.layers.Rescaling(50.0, name="b")(keras.layers.Dense(16, name="d2")(x))
    both = keras.layers.Concatenate(name="both")([a, b])
    head = keras.layers.Dense(1, name="head")(keras.layers.ReLU(name="r")(a))
    path = tmp_path_factory.mktemp("own_grids") / "m.h5"
    keras.Model(x, [both, head]).save(path)
    data = np.random.default_rng(0).normal(0, 1, (64, 8)).astype(np.float32)
    kept = []
    convert_to_tflite(load_model(path), QuantizeMode.INT8_FLOAT_IO, Dataset({"x": data}), keep_calibrated=kept.append)
    return kept[0], keras.models.load_model(path, compile=False), data


def _run(model: bytes, data: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    outs = []
    for s in data:
        interp.set_tensor(interp.get_input_details()[0]["index"], s[None])
        interp.invoke()
        outs.append([interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()])
    return [np.concatenate(col) for col in zip(*outs)]


def _relu_input(info):
    return info.tensor(next(ins[0] for k, (ins, _) in zip(info.ops, info.op_io) if k == "RELU"))


def test_the_relu_reads_the_float_output_on_its_own_grid_and_the_concat_keeps_the_shared_one(calibrated, monkeypatch):
    from edgepack.converter import own_grids, requantize
    from edgepack.tflite_model import read_tflite
    from edgepack.validation.metrics import sqnr_db

    cal, keras_model, data = calibrated
    tanh = next(node for kind, node, _, _ in cal.ops() if kind == "TANH")
    after = cal.quantize(denylist=[tanh])
    assert own_grids.count(after) == 1  # one QUANTIZE from the float tanh, on its own grid
    requantize._QUANTIZED.clear()
    monkeypatch.setattr(own_grids, "own_grids", lambda model, ranges: (model, 0))
    before = cal.quantize(denylist=[tanh])
    own, shared = (_relu_input(read_tflite(m)) for m in (after, before))
    assert own.name.endswith("/own_grid") and own.scale < shared.scale / 20  # tanh's (-1, 1) against 50 * dense's
    want = keras_model.predict(data, verbose=0)
    got_after, got_before = _run(after, data), _run(before, data)
    by_shape = lambda outs, n: next(o for o in outs if o.shape[-1] == n)  # noqa: E731
    assert np.array_equal(by_shape(got_after, 32), by_shape(got_before, 32))  # the concatenation: the same bytes
    gain = sqnr_db(want[1], by_shape(got_after, 1)) - sqnr_db(want[1], by_shape(got_before, 1))
    assert gain > 10, gain
