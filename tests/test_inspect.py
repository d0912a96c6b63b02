from __future__ import annotations

import json

from click.testing import CliRunner

from edgepack.cli import main


def test_inspect_bundle_and_bare_tflite(int8_bundle):
    r = CliRunner().invoke(main, ["inspect", str(int8_bundle), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["mode"] == "int8" and info["granularity"] == "per-channel"
    assert info["bytes"] == (int8_bundle / "model.tflite").stat().st_size
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["dtype"] == "int8"
    assert info["ops"]["CONV_2D"] == 1 and info["ops"]["FULLY_CONNECTED"] == 2
    bare = json.loads(CliRunner().invoke(main, ["inspect", str(int8_bundle / "model.tflite"), "--json"]).stdout)
    assert bare["ops"] == info["ops"]
    assert bare["inputs"][0]["name"] == "image"  # from the signature
    assert bare["inputs"][0]["scale"] == info["inputs"][0]["scale"]
    table = CliRunner().invoke(main, ["inspect", str(int8_bundle)])
    assert "CONV_2D" in table.stdout and "zero point" in table.stdout


def test_inspect_rejects_non_tflite(tmp_path):
    f = tmp_path / "x.tflite"
    f.write_bytes(b"garbage" * 4)
    r = CliRunner().invoke(main, ["inspect", str(f)])
    assert r.exit_code == 1 and "not a TFLite model" in r.stderr


def test_state_links_only_where_the_names_make_it_obvious():
    from edgepack.api import state_links

    assert state_links(["input", "state", "sr"], ["output", "stateN"]) == [{"output": "stateN", "input": "state"}]
    assert state_links(["x", "h", "c"], ["y", "h_out", "next_c"]) == [
        {"output": "h_out", "input": "h"}, {"output": "next_c", "input": "c"}]
    assert state_links(["image"], ["logits"]) == []
    assert state_links(["a"], ["a"]) == []  # a pass-through is not a state


def test_inspect_shows_a_streaming_models_state(tmp_path):
    """A tiny stateful ONNX model (x, state) -> (y, stateN): inspect says which output feeds which input."""
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto, helper

    from edgepack.cli import main

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "state"], ["y"]), helper.make_node("Mul", ["y", "state"], ["stateN"])],
        "stateful", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                     helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "stateful.onnx"))
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(tmp_path / "stateful.onnx"), "-o", str(tmp_path / "b"),
                               "--quantize", "none"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["inspect", str(tmp_path / "b")])
    assert res.exit_code == 0 and "output stateN feeds input state on the next call" in res.stdout
