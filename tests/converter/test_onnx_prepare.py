"""ONNX graph preparation (frozen inputs, If inlining, names TensorFlow refuses) and recurrent state
as first-class I/O (per-input sample axis, state pairs kept in their layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.packaging.manifest import read_manifest
from tests.converter.stream_builders import at_names, if_conv, lstm_state, stream_frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepare")
    return {"if_conv": if_conv(d / "if_conv.onnx"), "at_names": at_names(d / "at_names.onnx"),
            "lstm": lstm_state(d / "lstm_state.onnx"), "dir": d}


def _ort(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_prepared_graph_inlines_every_if_and_matches_onnxruntime(models, rate):
    import onnxruntime as ort

    from edgepack.converter.onnx.translate import conversion_shapes, prepare
    from edgepack.formats.detect import load_model
    from edgepack.formats.onnx import with_input_values

    loaded = with_input_values(load_model(models["if_conv"]), {"sr": rate})
    proto, _, record = prepare(loaded.model, conversion_shapes(loaded.model))
    assert record.frozen_inputs == {"sr": rate} and record.ifs_left == 0
    assert record.inlined_ifs == (2 if rate == 16000 else 1)  # the 16 kHz branch holds a second If
    assert not any(n.op_type == "If" for n in proto.graph.node)
    assert [i.name for i in proto.graph.input] == ["x"]
    x = np.random.default_rng(0).normal(size=(1, 2, 16)).astype(np.float32)
    want = _ort(models["if_conv"], {"x": x, "sr": np.array(rate, np.int64)})[0]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_convert_with_input_value_records_the_graph_stage_and_validates(models, tmp_path):
    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["convert", str(models["if_conv"]), "-o", str(out), "--quantize", "none",
                                    "--input-value", "sr=16000"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert [t.name for t in m.inputs] == ["x"]  # sr became a constant
    graph = next(s for s in m.stages if s.name == "graph").detail
    assert graph["inlined_ifs"] == 2 and graph["ifs_left"] == 0 and graph["max_rel_error_vs_original"] < 1e-6
    assert m.extras["graph"]["frozen_inputs"] == {"sr": 16000}
    x = np.random.default_rng(1).normal(size=(12, 2, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    # the reference is the original graph, fed the recorded sr
    report = api.validate(bundle=out, data=tmp_path / "x.npy", reference=models["if_conv"])
    assert report.outputs[0].sqnr_db is None or report.outputs[0].sqnr_db > 60


def test_unknown_input_value_is_one_line(models, tmp_path):
    res = CliRunner().invoke(main, ["convert", str(models["if_conv"]), "-o", str(tmp_path / "b"), "--quantize",
                                    "none", "--input-value", "rate=16000"])
    assert res.exit_code == 2 and "--input-value rate: the ONNX model has no input 'rate'" in res.stderr
    assert "Traceback" not in res.output


def test_names_tensorflow_refuses_are_renamed_keeping_io_names(models, tmp_path):
    from edgepack.converter.onnx.prepare import rename_for_tensorflow
    from edgepack.formats.detect import load_model

    proto = load_model(models["at_names"]).model.proto
    assert rename_for_tensorflow(proto) == 3  # two nodes, one tensor
    assert all("@" not in n.name and all("@" not in t for t in [*n.input, *n.output]) for n in proto.graph.node)
    res = api.convert(model=models["at_names"], output=tmp_path / "b", quantize="none")
    assert [t.name for t in res.manifest.inputs] == ["x"] and [t.name for t in res.manifest.outputs] == ["probs"]


# -- recurrent state ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lstm_bundles(models):
    d = models["dir"]
    calib = stream_frames(models["lstm"], 120, seed=1)
    np.savez(d / "calib.npz", **calib)
    out = {}
    for mode in ("none", "int8-float-io"):
        out[mode] = d / f"lstm_{mode}"
        api.convert(model=models["lstm"], output=out[mode], quantize=mode,
                    calibration=d / "calib.npz" if mode != "none" else None, calibration_samples=120)
    return out


def test_state_pair_is_found_and_kept_in_its_layout(lstm_bundles):
    for bundle in lstm_bundles.values():
        m = read_manifest(bundle)
        assert m.extras["graph"]["state_pairs"] == {"state": "stateN"}
        state, state_n = m.inputs[1], m.outputs[1]
        assert state.shape == [2, 1, 4] and state.perm is None and state.sample_axis is None  # not NCW->NWC
        assert state_n.shape == [2, 1, 4] and state_n.perm is None and state_n.sample_axis is None
        assert m.inputs[0].sample_axis == 0


def test_state_inputs_calibrate_and_validate_whole(models, lstm_bundles):
    held = stream_frames(models["lstm"], 40, seed=2)
    np.savez(models["dir"] / "held.npz", **held)
    for mode, floor in (("none", 60), ("int8-float-io", 15)):
        report = api.validate(bundle=lstm_bundles[mode], data=models["dir"] / "held.npz", reference=models["lstm"])
        assert report.samples == 40
        assert min(o.sqnr_db or 999 for o in report.outputs) > floor, (mode, [o.sqnr_db for o in report.outputs])


def test_keras_input_with_a_fixed_batch_keeps_it(tmp_path):
    import keras

    x = keras.Input(batch_shape=(2, 1, 8), name="state")
    keras.Model(x, keras.layers.Dense(4, name="dense")(x)).save(tmp_path / "m.keras")
    res = api.convert(model=tmp_path / "m.keras", output=tmp_path / "b", quantize="none")
    assert res.manifest.inputs[0].shape == [2, 1, 8] and res.manifest.inputs[0].sample_axis is None
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(5, 2, 1, 8)).astype(np.float32))
    report = api.validate(bundle=tmp_path / "b", data=tmp_path / "d.npy", reference=tmp_path / "m.keras")
    assert report.samples == 5 and report.outputs[0].max_abs_error < 1e-4
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["inputs"][0]["sample_axis"] is None


def test_an_op_type_that_is_not_an_identifier_is_an_unsupported_op():
    """A node of op type ``Nope.x`` made find_spec import a parent package and raise: an internal error
    at the graph stage instead of the unsupported-op line (security review)."""
    from onnx import TensorProto, helper

    from edgepack.converter.onnx.ready import unsupported_ops

    graph = helper.make_graph([helper.make_node("Nope.x", ["x"], ["y"], name="odd")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert unsupported_ops(helper.make_model(graph)) == {"Nope.x": ["odd"]}
