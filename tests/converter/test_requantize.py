"""Calibrate once, quantize many times: the calibrated model kept by an int8 conversion."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode
    from tests.conftest import INPUT_SHAPE, save_model

    path = save_model("tf_keras_h5", tmp_path_factory.mktemp("requant"))
    loaded = load_model(path)
    data = Dataset({"image": np.random.default_rng(0).random((40, *INPUT_SHAPE), dtype=np.float32)})
    kept = []
    plain = convert_to_tflite(loaded, QuantizeMode.INT8, data, keep_calibrated=kept.append)
    assert len(kept) == 1
    return kept[0], plain


def test_quantizing_again_gives_the_plain_int8_tensors(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, plain = calibrated
    a, b = read_tflite(plain), read_tflite(cal.quantize())
    assert [(t.name, t.dtype, t.scales) for t in a.tensors] == [(t.name, t.dtype, t.scales) for t in b.tensors]


def test_ranges_replace_the_recorded_min_max(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    t = next(t for t in cal.tensors() if t.max > 0 and t.name != cal.tensors()[0].name)
    before = next(x for x in read_tflite(cal.quantize()).tensors if x.name == t.name)
    after = next(x for x in read_tflite(cal.quantize(ranges={t.name: (t.min, t.max / 4)})).tensors if x.name == t.name)
    assert after.scale == pytest.approx(before.scale / 4, rel=0.02)


def test_ranges_written_in_place_equal_the_unpacked_edit(calibrated):
    from edgepack.converter.requantize import _with_ranges_unpacked, with_ranges
    from edgepack.errors import ConversionError

    cal, _ = calibrated
    picked = cal.tensors()[1:4]
    ranges = {t.index: (t.min / 2, t.max / 3) for t in picked[:2]} | {picked[2].name: (-1.5, 2.5)}
    fast = with_ranges(cal.model, ranges)
    assert len(fast) == len(cal.model) and fast != cal.model
    # byte for byte only the edited floats differ; read back, the same ranges as the unpacked edit
    assert sum(a != b for a, b in zip(fast, cal.model)) <= 4 * 2 * len(ranges)
    got = {t.index: (t.min, t.max) for t in cal.with_model(fast).tensors()}
    want = {t.index: (t.min, t.max) for t in cal.with_model(_with_ranges_unpacked(cal.model, ranges)).tensors()}
    assert got == want
    assert got[picked[2].index] == (-1.5, 2.5) and got[picked[0].index][1] == pytest.approx(picked[0].max / 3)
    with pytest.raises(ConversionError, match="no calibrated range"):
        with_ranges(cal.model, {"no such tensor": (0.0, 1.0)})


def test_denylisted_node_stays_float_and_float_output(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    kind, node, _, _ = next(op for op in cal.ops() if op[0] == "FULLY_CONNECTED")
    info = read_tflite(cal.quantize(denylist=[node]))
    assert next(t for t in info.tensors if t.name == node).dtype == "float32"
    assert "DEQUANTIZE" in info.op_counts
    out = read_tflite(cal.quantize(float_output=True))
    assert out.tensor(out.outputs[0]).dtype == "float32" and out.tensor(out.inputs[0]).dtype == "int8"


def test_reading_in_place_gives_what_the_verified_read_gives(calibrated):
    """The budget reads its candidates in place (``verify=False``): the same summary as the checked
    object-tree read, on the calibrated float model, full int8, a float op with float outputs, int16x8."""
    from edgepack.tflite_model import read_tflite

    cal, plain = calibrated
    node = next(node for kind, node, _, _ in cal.ops() if kind == "FULLY_CONNECTED")
    for model in (cal.model, plain, cal.quantize(denylist=[node], float_output=True), cal.quantize(int16=True)):
        fast, checked = read_tflite(model, verify=False), read_tflite(model)
        assert fast == checked
        assert fast.op_io and fast.signature_inputs
        assert any(t.scales for t in fast.tensors) == (model is not cal.model)  # the calibrated one: min/max only


def test_int16x8_calibrates_again_in_the_child(calibrated):
    from edgepack.tflite_model import read_tflite

    cal, _ = calibrated
    assert read_tflite(cal.quantize(int16=True)).quantization_mode == "int16x8"


def test_a_float_path_has_no_int8_rounding_left(tmp_path):
    """TF's quantizer leaves a quantize/dequantize pair after a denylisted sigmoid (its fixed 1/256
    grid) even when every consumer is float: stripped, the all-float candidate equals the source."""
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.calibration import Dataset
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode
    from edgepack.tflite_model import read_tflite

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    box = keras.layers.Dense(4, name="box")(h)
    score = keras.layers.Dense(2, activation="sigmoid", name="score")(h)
    model = keras.Model(inp, keras.layers.Concatenate(name="det")([box, score]))
    model.save(tmp_path / "det.h5")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    kept = []
    convert_to_tflite(load_model(tmp_path / "det.h5"), QuantizeMode.INT8_FLOAT_IO, Dataset({"x": x}),
                      keep_calibrated=kept.append)
    cal = kept[0]
    everything = [node for _, node, _, _ in cal.ops()]
    stripped = cal.quantize(denylist=everything, float_output=True)
    info = read_tflite(stripped)
    assert "QUANTIZE" not in info.op_counts and "DEQUANTIZE" not in info.op_counts
    ref = model.predict(x, verbose=0)
    interp = Interpreter(model_content=stripped)
    interp.resize_tensor_input(info.inputs[0], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(info.inputs[0], x)
    interp.invoke()
    got = interp.get_tensor(info.outputs[0]).reshape(ref.shape)
    noise = float(np.sum((ref - got) ** 2))
    assert 10 * np.log10(float(np.sum(ref ** 2)) / max(noise, 1e-30)) > 80.0


def _gated_model(tmp_path):
    """x * relu6(x + 2) (offset 2 so TF does not fuse it into HARD_SWISH): TF's calibrator records the
    relu6 output (0..6) with the product's range, which would leave it a handful of int8 levels."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    gate = keras.layers.ReLU(max_value=6.0, name="gate")(keras.layers.Rescaling(1.0, offset=2.0)(x))
    h = keras.layers.Conv2D(8, 3, padding="same")(keras.layers.Multiply()([x, gate]))
    model = keras.Model(inp, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "gated.h5")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32) * 3)
    return tmp_path / "gated.h5", tmp_path / "calib.npy"


def _gate_scale(bundle) -> float:
    from edgepack.tflite_model import read_tflite

    info = read_tflite((bundle / "model.tflite").read_bytes())
    return next(t for t in info.tensors if "gate" in t.name and t.dtype == "int8" and "Mul" not in t.name).scale


def test_one_calibration_pass_records_the_ranges_the_values_have(tmp_path):
    """The one-pass calibration (every tensor in its own buffer) gives the relu6 output its 0..6: no
    range is recorded too wide, so there is nothing to repair and no second pass."""
    from edgepack import api

    model, calib = _gated_model(tmp_path)
    res = api.convert(model=model, output=tmp_path / "bundle", calibration=calib)
    assert res.manifest.quantization.calibration.repaired_ranges == 0
    assert _gate_scale(tmp_path / "bundle") == pytest.approx(6.0 / 255, rel=0.02)  # not the product's range


def test_ranges_the_calibrator_records_too_wide_are_repaired(tmp_path, monkeypatch):
    """Graphs the one pass cannot take (several subgraphs, LSTM kernels) keep TensorFlow's calibrator;
    its too-wide ranges are checked and replaced by the values seen."""
    from edgepack import api
    from edgepack.converter import minmax

    monkeypatch.setattr(minmax, "calibration_tensors", lambda model: None)  # as for such a graph
    model, calib = _gated_model(tmp_path)
    res = api.convert(model=model, output=tmp_path / "bundle", calibration=calib)
    assert res.manifest.quantization.calibration.repaired_ranges == 1
    assert _gate_scale(tmp_path / "bundle") == pytest.approx(6.0 / 255, rel=0.02)


def test_one_pass_ranges_match_the_calibrator_after_its_repair(tmp_path):
    """The one pass logs the tensors TensorFlow's calibrator logs, with the same min/max, except where
    the calibrator recorded a consumer's in-place result: there it gives what the repair gives."""
    from edgepack.converter import isolate
    from edgepack.converter.minmax import calibration_tensors, with_calibration
    from edgepack.converter.requantize import repair_ranges
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    model, _ = _gated_model(tmp_path)
    float_model = convert_to_tflite(load_model(model), QuantizeMode.NONE, None)
    data = np.load(tmp_path / "calib.npy")

    def samples():
        return ([d[None]] for d in data)

    tensors = calibration_tensors(float_model)
    ours = _recorded(with_calibration(float_model, isolate.observe(float_model, samples(), tensors)))
    tf_cal = isolate.calibrate(float_model, samples())
    repaired, fixed = repair_ranges(tf_cal, samples)
    theirs, raw = _recorded(repaired), _recorded(tf_cal)
    assert sorted(ours) == sorted(raw) == tensors
    assert fixed and all(raw[i] != ours[i] for i in fixed)  # the in-place union, which the one pass never records
    for i in tensors:
        assert ours[i] == pytest.approx(theirs[i], rel=1e-4, abs=1e-5), i


def test_ranges_that_follow_from_other_ranges_are_derived_not_read(tmp_path):
    """Sigmoid and tanh outputs, concatenations and the reshape family take their range from their inputs'
    (not read in the pass): the same ranges a pass reading every tensor gives (to float32 rounding of the
    sigmoid), and a conversion with them the same int8 model."""
    import tf_keras as keras

    from edgepack.converter import isolate
    from edgepack.converter.minmax import calibration_tensors, derived_tensors, with_derived
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode
    from edgepack.tflite_model import read_tflite

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same")(inp)
    gated = keras.layers.Multiply()([a, keras.layers.Activation("sigmoid")(a)])
    joined = keras.layers.Concatenate()([gated, keras.layers.Activation("tanh")(b)])
    flat = keras.layers.Permute((3, 1, 2))(keras.layers.Reshape((36, 8))(joined)[:, None])
    head = keras.layers.Concatenate()([keras.layers.Flatten()(flat), keras.layers.Reshape((144,))(a)])
    keras.Model(inp, keras.layers.Dense(3)(head)).save(tmp_path / "m.h5")
    float_model = convert_to_tflite(load_model(tmp_path / "m.h5"), QuantizeMode.NONE, None)
    data = np.random.default_rng(1).normal(size=(16, 6, 6, 3)).astype(np.float32) * 2

    def samples():
        return ([d[None]] for d in data)

    tensors = calibration_tensors(float_model)
    derived = derived_tensors(float_model, tensors)
    kinds = {read_tflite(float_model).ops[i] for i, (_, outs) in enumerate(read_tflite(float_model).op_io)
             if outs and int(outs[0]) in derived}
    assert {"LOGISTIC", "TANH", "CONCATENATION"} <= kinds and kinds & {"RESHAPE", "TRANSPOSE"}, kinds
    every = isolate.observe(float_model, samples(), tensors)
    ours = with_derived(isolate.observe(float_model, samples(), [t for t in tensors if t not in derived]), derived)
    assert sorted(ours) == sorted(every)
    # the samples dealt to two children in turn: the same min/max, bit for bit, as one child seeing them all
    assert isolate.observe(float_model, samples(), tensors, workers=2) == isolate.observe(float_model, samples(),
                                                                                          tensors, workers=1) == every
    exact = 0
    for t in tensors:
        assert ours[t] == pytest.approx(every[t], rel=1e-6, abs=1e-7), t
        kind, src = derived.get(t, ("", []))
        if kind in ("CONCATENATION", "RESHAPE", "TRANSPOSE") and not set(src) & set(derived):
            assert ours[t] == every[t], t  # the same values read: the same floats
            exact += 1
    assert exact >= 1


def _recorded(model: bytes) -> dict[int, tuple[float, float]]:
    from edgepack.converter.requantize import _unpack

    sg = _unpack(model).subgraphs[0]
    return {i: (float(t.quantization.min[0]), float(t.quantization.max[0])) for i, t in enumerate(sg.tensors)
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min)}


def test_ops_with_several_outputs_are_kept_float_by_type(tmp_path):
    """TF's quantizer does not match a SPLIT (an LSTM's gate split) by its node name; denylisted, it
    is kept float by its type, so an all-float candidate has no int8 op left."""
    from edgepack.api import convert_request
    from edgepack.pipeline.run import run_pipeline
    from edgepack.tflite_model import read_tflite
    from tests.converter.onnx_builders import split_gates

    model = split_gates(tmp_path / "gates.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    state = run_pipeline(convert_request(model=model, output=tmp_path / "b", calibration=tmp_path / "calib.npy"))
    cal = state.calibrated
    assert any(kind == "SPLIT" and len(outs) == 3 for kind, _, _, outs in cal.ops())
    everything = [node for kind, node, _, _ in cal.ops() if kind not in ("QUANTIZE", "DEQUANTIZE")]
    info = read_tflite(cal.quantize(denylist=everything, float_output=True))
    inside = {t.dtype for i, t in enumerate(info.tensors) if not t.constant and i not in info.inputs}
    assert inside == {"float32"}, info.op_counts  # the model's int8 input is dequantized once, at the start
    assert "SPLIT" in info.op_counts and "QUANTIZE" not in info.op_counts


def test_a_failing_observe_child_of_two_is_one_error_and_no_hang(tmp_path):
    """The one pass deals the samples to two children; one of them failing (a sample its model cannot take)
    ends in one ConversionError naming the stage, while the other child finishes and nothing waits forever."""
    from edgepack.converter import isolate
    from edgepack.converter.minmax import calibration_tensors
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.errors import ConversionError
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    model, _ = _gated_model(tmp_path)
    float_model = convert_to_tflite(load_model(model), QuantizeMode.NONE, None)
    data = np.load(tmp_path / "calib.npy")
    bad = data[:1].astype(np.float64)  # a type the model's input does not take
    samples = [[d[None]] for d in data[:5]] + [[bad]] + [[d[None]] for d in data[5:40]]
    with pytest.raises(ConversionError) as info:
        isolate.observe(float_model, iter(samples), calibration_tensors(float_model), workers=2, stage="range check")
    assert info.value.message.startswith("TensorFlow Lite range check failed: ") and "\n" not in info.value.message
    assert "FLOAT64" in info.value.message, info.value.message  # the child's own reason


def test_a_second_observing_child_only_where_its_memory_is_small(tmp_path, monkeypatch):
    import os

    from edgepack.converter import isolate
    from edgepack.converter.minmax import calibration_tensors, with_outputs
    from edgepack.converter.tflite import convert_to_tflite
    from edgepack.formats.detect import load_model
    from edgepack.request import QuantizeMode

    model, _ = _gated_model(tmp_path)
    float_model = convert_to_tflite(load_model(model), QuantizeMode.NONE, None)
    tensors = calibration_tensors(float_model)
    observed = with_outputs(float_model, tensors)
    assert isolate.observe_workers(observed, tensors) == (2 if (os.cpu_count() or 1) >= 2 else 1)
    monkeypatch.setattr(isolate, "CHILD_MEMORY", len(observed))  # the model alone fills it: one child
    assert isolate.observe_workers(observed, tensors) == 1
