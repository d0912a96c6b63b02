"""The ptq algorithms that edit the calibrated model after conversion (``ranges``,
``int8-bias-correction``), on tiny Keras models with the defect each fixes: int8 SQNR against the
Keras model with and without the algorithm, and the manifest record."""

from __future__ import annotations

import numpy as np

from tests.optimize.ptq_builders import biased_depthwise_keras
from tests.optimize.test_ptq_keras import _compare_keras


def test_ranges_clip_an_outlier_channel_the_next_layer_ignores(tmp_path):
    """Channel 7 of conv1 reaches ~300 and sets the int8 step of the whole tensor (1.2: the other
    channels, 0..3, get 2-3 levels), while conv2 reads it with weights near 0: its error reaches
    nothing. The range chosen by the error downstream clips it; min/max does not."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4), name="image")
    a = keras.layers.Conv2D(8, 1, activation="relu", name="conv1")(inp)
    out = keras.layers.Conv2D(4, 1, name="conv2")(a)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.5, (1, 1, 4, 8)).astype(np.float32)
    w1[..., 7] = 100.0
    model.get_layer("conv1").set_weights([w1, np.full(8, 0.5, np.float32)])
    w2 = rng.normal(0, 0.5, (1, 1, 8, 4)).astype(np.float32)
    w2[:, :, 7] = 1e-4
    model.get_layer("conv2").set_weights([w2, np.zeros(4, np.float32)])
    x = np.abs(rng.normal(0, 1, (132, 8, 8, 4))).astype(np.float32)
    chosen, recorded, m = _compare_keras(tmp_path, model, x, "ranges")
    rec = m.extras["ptq"]["ranges"]
    assert rec["groups"] == 2, rec  # conv1's output and the model's output (its int8 grid is rounding too)
    assert rec["tensors"] >= 1 and rec["largest"][0]["shrink"] < 0.2, rec
    assert rec["calibration_error_db_after"] < rec["calibration_error_db_before"] - 6
    assert chosen > recorded + 10, (chosen, recorded)
    # the pick held on 24 calibration samples it was not chosen on
    assert rec["confirm_samples"] == 24 and rec["not_confirmed"] == 0
    assert rec["confirm_error_db"] < rec["calibration_error_db_before"] - 6
    assert rec["worst_channel_error_db_after"] < rec["worst_channel_error_db_before"] - 6, rec


def test_ranges_choose_one_range_for_a_concatenation_on_all_of_its_inputs_values(tmp_path):
    """TFLite's int8 CONCATENATION puts its inputs on the output's scale. Branch "small" (values < 3) comes first,
    branch "big" (values to ~25, one outlier ~400) second: the range is chosen once for the three tensors, over the
    values of both branches (it was chosen on the first input's values alone), and the int8 model gives them one
    scale."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4), name="image")
    small = keras.layers.Conv2D(4, 1, activation="relu", name="small")(inp)
    big = keras.layers.Conv2D(4, 1, activation="relu", name="big")(inp)
    model = keras.Model(inp, keras.layers.Concatenate(name="joined")([small, big]))
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (1, 1, 4, 4)).astype(np.float32)
    model.get_layer("small").set_weights([w, np.zeros(4, np.float32)])
    model.get_layer("big").set_weights([np.abs(w) * 10, np.zeros(4, np.float32)])
    x = np.abs(rng.normal(0, 1, (132, 8, 8, 4))).astype(np.float32)
    x[5, 0, 0] = 40.0  # one calibration pixel sets the recorded range
    chosen, recorded, m = _compare_keras(tmp_path, model, x, "ranges")
    rec = m.extras["ptq"]["ranges"]
    assert rec["groups"] == 1, rec  # the two branches and the concatenation (the model's output)
    assert rec["tensors"] == 3 and rec["largest"][0]["recorded"][1] > 50, rec
    assert rec["largest"][0]["chosen"][1] > 10, rec  # the big branch's values are in the histogram
    assert chosen >= recorded - 0.05, (chosen, recorded)
    interp = Interpreter(model_path=str(tmp_path / "with" / "model.tflite"))
    scales = {d["quantization"][0] for d in interp.get_tensor_details()
              if d["dtype"] == np.int8 and d["quantization"][0] > 0 and len(d["shape"]) == 4
              and "image" not in d["name"]}
    assert len(scales) == 1, scales


def test_ranges_are_on_by_default_and_left_alone_without_samples_to_confirm_on(tmp_path):
    """On by default; with 30 calibration samples (24 to choose on, 6 to confirm) the recorded
    ranges stay and the manifest says why; with 60 the choice runs (one chunk, every rule tried)."""
    import keras

    from edgepack import api
    from edgepack.packaging.manifest import read_manifest

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    out = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    path = tmp_path / "m.keras"
    keras.Model(inp, out).save(path)
    x = np.random.default_rng(0).normal(0, 1, (60, 6, 6, 3)).astype(np.float32)
    for n in (30, 60):
        np.save(tmp_path / f"c{n}.npy", x[:n])
        api.convert(model=path, output=tmp_path / f"o{n}", quantize="int8", calibration=tmp_path / f"c{n}.npy")
    few = read_manifest(tmp_path / "o30").extras["ptq"]["ranges"]
    assert few == {"skipped": "30 calibration samples: choosing ranges takes 32 or more (24 to choose on, at "
                              "least 8 others to confirm the pick)"}
    ran = read_manifest(tmp_path / "o60").extras["ptq"]["ranges"]
    # the recorded ranges, each rule's, then every range scaled by each factor of ranges.SCALES
    assert ran["quantizations"] == 6 and len(ran["chunks"]) == 1 and ran["confirm_samples"] == 24, ran
    assert ran["scale"] in (1.0, 0.9975, 1.0025), ran
    # what changed, not how long it took (the stage's timing): the same conversion twice gives the same extras
    stage = next(s for s in read_manifest(tmp_path / "o60").stages if s.name == "ptq_calibrated")
    assert "seconds" not in ran and stage.seconds > 0


def test_ranges_leave_graphs_tensorflow_calibrated_alone(tmp_path, monkeypatch):
    """Graphs the one-pass calibration cannot run (several subgraphs, LSTM kernels, custom ops: routed
    to TensorFlow's calibrator in its child) keep their recorded ranges: the choice runs the model in
    this process. Routed here by the one-pass check itself saying no."""
    import keras

    from edgepack import api
    from edgepack.converter import minmax
    from edgepack.packaging.manifest import read_manifest

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    path = tmp_path / "m.keras"
    keras.Model(inp, keras.layers.Conv2D(4, 3, activation="relu")(inp)).save(path)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(0, 1, (60, 6, 6, 3)).astype(np.float32))
    monkeypatch.setattr(minmax, "calibration_tensors", lambda model: None)
    api.convert(model=path, output=tmp_path / "o", quantize="int8", calibration=tmp_path / "c.npy")
    m = read_manifest(tmp_path / "o")
    assert "TensorFlow's calibrator" in m.extras["ptq"]["ranges"]["skipped"]


def test_a_failing_default_ranges_choice_costs_the_conversion_nothing(tmp_path, monkeypatch):
    """On by default, ``ranges`` is a refinement: if it breaks (a bug of ours, a runtime's error), the
    bundle is written with the recorded ranges and the manifest says what failed; asked for with
    ``--ptq ranges``, the failure is the conversion's."""
    import keras
    import pytest

    from edgepack import api
    from edgepack.optimize.ptq import ranges
    from edgepack.packaging.manifest import read_manifest

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    path = tmp_path / "m.keras"
    keras.Model(inp, keras.layers.Conv2D(4, 3, activation="relu")(inp)).save(path)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(0, 1, (60, 6, 6, 3)).astype(np.float32))

    def broken(*args, **kwargs):
        raise RuntimeError("tensor 7 is gone\nmore")

    monkeypatch.setattr(ranges, "choose_ranges", broken)
    api.convert(model=path, output=tmp_path / "o", quantize="int8", calibration=tmp_path / "c.npy")
    assert read_manifest(tmp_path / "o").extras["ptq"]["ranges"] == {"skipped": "failed: RuntimeError: tensor 7 is gone"}
    with pytest.raises(Exception, match="tensor 7 is gone"):
        api.convert(model=path, output=tmp_path / "o2", quantize="int8", calibration=tmp_path / "c.npy", ptq=["ranges"])
    assert not (tmp_path / "o2").exists()


def test_ranges_are_confirmed_on_samples_they_were_not_chosen_on():
    from edgepack.optimize.ptq.ranges import spaced, spaced_apart

    data = [[np.full((2,), i, np.float32)] for i in range(100)]
    chosen, confirm = spaced_apart(lambda: data)
    picked = {int(s[0][0]) for s in chosen}
    assert len(chosen) == len(confirm) == 24 and not picked & {int(s[0][0]) for s in confirm}
    assert [int(s[0][0]) for s in spaced(lambda: data)] == sorted(picked)  # the choice is the one it always was
    few = spaced_apart(lambda: data[:30])
    assert len(few[0]) == 24 and len(few[1]) == 6

    class Taking:  # the converter's samples: a length, and take() reads those positions alone
        def __init__(self):
            self.read = []

        def __len__(self):
            return len(data)

        def __call__(self):
            raise AssertionError("the whole set was read")

        def take(self, positions):
            self.read += [int(p) for p in positions]
            return [data[int(p)] for p in positions]

    taking = Taking()
    got = spaced_apart(taking)
    assert [[int(s[0][0]) for s in part] for part in got] == [[int(s[0][0]) for s in part] for part in (chosen, confirm)]
    assert sorted(taking.read) == sorted(picked | {int(s[0][0]) for s in confirm})  # 48 samples of 100 read


def test_a_measure_stops_at_the_first_half_when_it_cannot_beat_and_judges_the_same(monkeypatch):
    import tensorflow as tf

    from edgepack.optimize.ptq import tflite_graph
    from edgepack.optimize.ptq.tflite_graph import Measure, better

    inp = tf.keras.Input((8,))
    model = tf.keras.Model(inp, tf.keras.layers.Dense(4)(tf.keras.layers.Dense(8, activation="relu")(inp)))
    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    rng = np.random.default_rng(0)
    samples = [[rng.normal(size=(1, 8)).astype(np.float32)] for _ in range(12)]
    exact = Measure(float_model, float_model, samples)
    runs = []
    real = tflite_graph.Runner.run

    def counted(self, sample):
        runs.append(1)
        return real(self, sample)

    monkeypatch.setattr(tflite_graph.Runner, "run", counted)
    full = exact(float_model)
    assert len(runs) == 12 and full[0] < -100  # the float model against itself
    assert exact.timing.parallel is not None or tflite_graph.cores() < 2  # one interpreter or several: timed, then kept
    runs.clear()
    worse = exact(float_model, beat=full - 1.0)  # cannot be below a distance 1 dB under its own
    assert len(runs) == 6 and np.isinf(worse[0]) and worse[1] == full[1] and not better(worse, full - 1.0)
    runs.clear()
    again = exact(float_model, beat=full + 1.0)  # can: measured on all samples, the same figures
    assert len(runs) == 12 and np.array_equal(again, full) and better(again, full + 1.0)
    monkeypatch.setattr(tflite_graph, "QUICK", 0.0)  # timed both ways (one interpreter, then one per core): the same
    probed = Measure(float_model, float_model, samples)
    assert np.array_equal(probed(float_model), full) and np.array_equal(probed(float_model), full)
    assert isinstance(probed.timing.parallel, bool) or tflite_graph.cores() < 2


def test_a_range_rule_that_helps_the_mean_and_hurts_one_outputs_worst_channel_is_not_kept():
    """The choice averages whole-tensor and worst-channel error (and over the measured outputs): a rule that
    makes output 0 far better and output 1's channel 2 worse lowers that mean. With the worst channel in the
    distance (on all samples and on each half, as ``choose_ranges`` measures), the change is refused; without
    it, it would be kept; a change that raises the worst channel on one half only is not refused for it."""
    from edgepack.optimize.ptq.tflite_graph import better, output_error, worst_channel_error

    rng = np.random.default_rng(0)
    refs = [[rng.normal(0, 1, (10, 3)), rng.normal(0, 1, (10, 3))] for _ in range(8)]
    old = [[r + rng.normal(0, 0.1, r.shape) for r in s] for s in refs]

    def changed(hurt_samples: range) -> list[list[np.ndarray]]:
        out = []
        for i, s in enumerate(refs):
            hurt = s[1] + rng.normal(0, 0.1, s[1].shape)
            if i in hurt_samples:
                hurt[:, 2] += rng.normal(0, 0.4, 10)
            out.append([s[0] + rng.normal(0, 0.001, s[0].shape), hurt])
        return out

    def distance(outs, worst):
        halves = ((refs, outs), (refs[:4], outs[:4]), (refs[4:], outs[4:]))
        found = [output_error(r, o) for r, o in halves]
        return np.array(found + [worst_channel_error(r, o) for r, o in halves] if worst else found)

    new = changed(range(8))
    assert output_error(refs, new) < output_error(refs, old) - 10  # the mean says: far better
    assert worst_channel_error(refs, new) > worst_channel_error(refs, old) + 6  # output 1's channel 2: worse
    assert better(distance(new, False), distance(old, False))
    assert not better(distance(new, True), distance(old, True))
    one_half = changed(range(4))  # worse on the first half only: not shown on the data
    assert worst_channel_error(refs[4:], one_half[4:]) < worst_channel_error(refs[4:], old[4:])
    assert better(distance(one_half, True), distance(old, True))


def test_int8_bias_correction_of_a_biased_depthwise_rounding(tmp_path):
    """Every depthwise weight 0.45 of an int8 step above the grid: the int8 layer's output on inputs
    near 4 is low by the same amount on every pixel; measured on the int8 model, it goes to the bias."""
    model, x = biased_depthwise_keras()
    corrected, plain, m = _compare_keras(tmp_path, model, x, "int8-bias-correction")
    rec = m.extras["ptq"]["int8-bias-correction"]
    assert rec["layers"] == 1 and rec["samples"] == 24 and rec["chunks"] == ["full"], rec
    assert rec["largest"][0]["max_abs_shift"] > 0.05
    assert corrected > plain + 3, (corrected, plain)


def test_runners_deal_the_samples_and_give_the_outputs_in_order():
    """Several one-thread interpreters run the samples at once: the outputs are a single interpreter's, sample
    by sample, in the samples' order (an odd count, more interpreters than some calls have samples)."""
    import tensorflow as tf

    from edgepack.optimize.ptq.tflite_graph import Runner, Runners

    inp = tf.keras.Input((6,))
    model = tf.keras.Model(inp, tf.keras.layers.Dense(3)(tf.keras.layers.Dense(8, activation="relu")(inp)))
    tfl = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    rng = np.random.default_rng(1)
    samples = [[rng.normal(size=(1, 6)).astype(np.float32)] for _ in range(7)]
    one = Runner(tfl, keep=False, threads=1)
    want = [one.run(s)[0] for s in samples]
    for parallel in (False, True):
        runs = Runners(tfl, parallel)
        got = [o[0] for o in runs.run(samples)]
        assert len(got) == 7 and all(np.array_equal(a, b) for a, b in zip(got, want))
        single = runs.run(samples[3:4])
        assert len(single) == 1 and np.array_equal(single[0][0], want[3])


def test_every_range_scaled_by_the_factor_that_beats_the_pick_and_holds_on_the_confirming_samples():
    """``ranges``' last step: each group's range (the rule's pick, else the recorded one) times each factor; a
    factor is kept when it lowers the error on the choice samples (all, each half) and on the confirming ones."""
    from edgepack.optimize.ptq import ranges

    class Graph:  # the recorded ranges of two groups of tensors
        def recorded_range(self, t):
            return {1: (-1.0, 2.0), 2: (-2.0, 1.0), 3: (0.0, 4.0)}[t]

    groups = {1: [1, 2], 3: [3]}
    chosen = {3: (0.0, 3.0)}  # a rule's pick for group 3; group 1 keeps its recorded range, the union [-2, 2]
    choice = {0.9: [-21.0, -21.0, -21.0], 0.95: [-23.0, -23.0, -22.9], 1.1: [-19.0, -19.0, -19.0]}
    confirm = {0.95: [-22.0, -22.0, -22.0]}
    seen = []

    def quantized(trial):
        seen.append(trial)
        return next(f for f in choice if np.isclose(trial[3][1], 3.0 * f))

    def distance(f, beat=None):
        return np.asarray(choice[f])

    def check(f):
        return np.asarray(confirm.get(f, [-19.0, -19.0, -19.0]))

    best, checked = np.full(3, -20.0), np.full(3, -20.0)
    got = ranges._scaled(Graph(), groups, chosen, quantized, distance, check, best, checked, (0.9, 0.95, 1.1))
    trial, err, err_confirm, factor = got
    assert factor == 0.95 and trial == {1: (-2.0 * 0.95, 2.0 * 0.95), 3: (0.0, 3.0 * 0.95)}
    assert list(err) == choice[0.95] and list(err_confirm) == confirm[0.95]
    assert len(seen) == 3  # every factor quantized once
    # the best on the choice samples that does not hold on the confirming ones: nothing is kept
    confirm.clear()
    assert ranges._scaled(Graph(), groups, chosen, quantized, distance, check, best, checked, (0.9, 0.95)) is None
    # none better than the pick: nothing is kept, nothing confirmed
    assert ranges._scaled(Graph(), groups, chosen, quantized, distance, check, best, checked, (1.1,)) is None
