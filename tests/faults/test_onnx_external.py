"""ONNX external data that ends before a tensor's bytes do: the tensor is named at load, before onnx2tf."""

from __future__ import annotations

import os

import pytest

from tests.converter.onnx_builders import classifier
from tests.faults.conftest import assert_error, leftovers, run_cli


@pytest.fixture()
def external_model(tmp_path):
    return classifier(tmp_path / "model" / "net.onnx", external=True)


@pytest.mark.parametrize("cut", [4, 4000])
def test_truncated_external_data_names_the_tensor(external_model, tmp_path, private_tmpdir, cut):
    weights = external_model.parent / "weights.bin"
    os.truncate(weights, weights.stat().st_size - cut)  # the last tensors' bytes run past the end
    res = run_cli(["convert", external_model, "-o", tmp_path / "b", "--quantize", "none"])
    line = assert_error(res, 1, "external data is short", "ONNX tensor '")
    assert "weights.bin" in line and "reshape" not in line.lower()
    assert not (tmp_path / "b").exists()
    assert leftovers(tmp_path, private_tmpdir) == []


def test_external_data_offset_past_the_end(external_model, tmp_path):
    import onnx

    proto = onnx.load(str(external_model), load_external_data=False)
    for entry in proto.graph.initializer[-1].external_data:
        if entry.key == "offset":
            entry.value = str(10 ** 9)
    onnx.save(proto, str(external_model))
    res = run_cli(["convert", external_model, "-o", tmp_path / "b", "--quantize", "none"])
    assert_error(res, 1, f"ONNX tensor '{proto.graph.initializer[-1].name}'", "past the end of weights.bin")
