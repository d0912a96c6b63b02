"""Loading ONNX safely (external data stays in the model's folder) and converting offline."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.errors import ModelLoadError
from edgepack.formats.detect import load_model
from tests.converter.onnx_builders import classifier


def _relocate(model_path: Path, location: str) -> None:
    """Point every external tensor of ``model_path`` at ``location``."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(model_path))


@pytest.fixture()
def external_model(tmp_path) -> Path:
    path = classifier(tmp_path / "model" / "net.onnx", external=True)
    assert (path.parent / "weights.bin").is_file()
    return path


def test_external_data_inside_the_folder_loads_and_converts(external_model, tmp_path):
    loaded = load_model(external_model)
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    assert loaded.model({"image": x})[0].shape == (2, 10)
    m = api.convert(model=external_model, output=tmp_path / "b", quantize="float16").manifest
    assert m.quantization.mode == "float16"


@pytest.mark.parametrize("case, why", [
    ("dotdot", r"leaves the model's folder \(\.\.\)"),
    ("absolute", "is an absolute path"),
    ("symlink", "goes through a symlink"),
    ("missing", "does not exist in"),
])
def test_external_data_outside_the_folder_is_refused(external_model, tmp_path, case, why):
    folder = external_model.parent
    weights = folder / "weights.bin"
    if case == "dotdot":
        shutil.move(weights, tmp_path / "weights.bin")
        _relocate(external_model, "../weights.bin")
    elif case == "absolute":
        shutil.move(weights, tmp_path / "weights.bin")
        _relocate(external_model, str(tmp_path / "weights.bin"))
    elif case == "symlink":
        shutil.move(weights, tmp_path / "elsewhere.bin")
        os.symlink(tmp_path / "elsewhere.bin", weights)
    else:
        weights.unlink()
    with pytest.raises(ModelLoadError, match=rf"ONNX tensor '(conv_w|conv_b|fc_w|fc_b)': external data location .*{why}"):
        load_model(external_model)
    res = CliRunner().invoke(main, ["convert", str(external_model), "-o", str(tmp_path / "b"), "--quantize", "none"])
    assert res.exit_code == 1 and res.stderr.startswith("error: ONNX tensor") and "Traceback" not in res.output


def test_corrupt_onnx_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_model(bad)


@pytest.fixture()
def no_network(monkeypatch):
    """Every socket connection or name lookup fails, and is recorded."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_onnx2tf_would_download_without_edgepack(no_network, tmp_path, monkeypatch):
    """The hazard is real: outside edgepack's working dir, onnx2tf's sample loader goes online."""
    from onnx2tf.utils.common_functions import download_test_image_data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 (whatever onnx2tf raises once the network is refused)
        download_test_image_data()
    assert no_network, "onnx2tf did not try the network"


def test_conversion_of_a_3_channel_image_model_is_offline(no_network, tmp_path, monkeypatch):
    """1x3x8x8 is exactly the input for which onnx2tf fetches sample images from GitHub."""
    monkeypatch.chdir(tmp_path)
    path = classifier(tmp_path / "rgb.onnx", batch=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # edgepack's temp dirs land here
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    np.save(tmp_path / "calib.npy", x)
    m = api.convert(model=path, output=tmp_path / "b", quantize="int8", calibration=tmp_path / "calib.npy").manifest
    assert m.quantization.mode == "int8"
    assert no_network == []
    # onnx2tf's working dir (and the sample file in it) is gone; nothing was left in the cwd
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "calib.npy", "rgb.onnx", "scratch"]


def test_sample_file_matches_what_onnx2tf_reads(tmp_path, no_network):
    """The file edgepack writes is the one onnx2tf's loader picks up (no network needed)."""
    from onnx2tf.utils import common_functions

    from edgepack.converter.onnx.translate import SAMPLE_FILE, write_sample_images

    write_sample_images(tmp_path)
    assert (tmp_path / SAMPLE_FILE).is_file()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        data = common_functions.download_test_image_data()
    finally:
        os.chdir(cwd)
    assert data.shape == (20, 128, 128, 3) and data.dtype == np.float32 and no_network == []


def test_models_written_by_the_stacks_own_onnx_run_in_its_onnxruntime(tmp_path):
    """onnx 1.19 writes IR version 12 by default; onnxruntime 1.23 reads at most 11. The loader
    lowers the IR version to what the opsets need, so the reference run works."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edgepack.formats.detect import load_model

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert model.ir_version == 12
    onnx.save(model, tmp_path / "relu.onnx")
    loaded = load_model(tmp_path / "relu.onnx")
    assert loaded.model.proto.ir_version == 7  # the minimum for opset 13
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(loaded.model({"x": x})[0], np.maximum(x, 0))
