"""`edgepack convert --prune channels:R` end to end on a Keras 3 model, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


@pytest.fixture(scope="module")
def unlabelled_npz(tmp_path_factory):
    from tests.conftest import INPUT_SHAPE

    path = tmp_path_factory.mktemp("train") / "unlabelled.npz"
    np.savez(path, x=np.random.default_rng(3).random((96, *INPUT_SHAPE), dtype=np.float32))
    return path


def test_prune_channels_records_before_and_after(tmp_path, keras3_model, calib_npy, unlabelled_npz):
    out = tmp_path / "bundle"
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(out), "--calibration", str(calib_npy),
                                    "--prune", "channels:0.5", "--train-data", str(unlabelled_npz),
                                    "--epochs", "2", "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "int8"
    assert manifest["source"]["format"] == "keras3"
    opt = manifest["extras"]["optimize"]
    conv, *_, logits = opt["channels"]["layers"]  # model order; auto-generated names vary per session
    assert conv["channels_before"] == 8 and conv["channels_after"] == 4
    assert logits["name"] == "logits" and logits["channels_after"] == logits["channels_before"]  # output layer
    # no labels in the data: the original model taught the pruned one
    assert opt["channels"]["finetune"]["target"] == "teacher"
    assert 1 <= opt["channels"]["finetune"]["epochs"] <= 2
    before, after = opt["before"], opt["after"]
    assert after["macs"] <= 0.55 * before["macs"] and after["params"] < before["params"]
    assert after["tflite_bytes"] == (out / "model.tflite").stat().st_size < before["tflite_bytes"]
    assert before["litert_p50_ms"] > 0 and after["litert_p50_ms"] > 0
    assert any(s["name"] == "optimize" for s in manifest["stages"])


@pytest.mark.parametrize("args, message", [
    (["--prune", "channels:2"], "invalid value 'channels:2' for --prune"),
    (["--prune", "sparsity:0.5"], "--prune sparsity:0.5 needs training data"),
    (["--qat", "--train-data", "{labelled}", "--quantize", "float16"], "--qat trains for integer inference"),
])
def test_bad_optimize_options_are_one_line_usage_errors(tmp_path, keras3_model, calib_npy, labelled_npz, args,
                                                        message):
    args = [a.replace("{labelled}", str(labelled_npz)) for a in args]
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(tmp_path / "b"), "--calibration",
                                    str(calib_npy), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "b").exists()


def test_train_data_must_fit_the_model(tmp_path, keras3_model, calib_npy):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3, 3), np.float32))
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(tmp_path / "b"), "--calibration",
                                    str(calib_npy), "--prune", "channels:0.5", "--train-data", str(bad)])
    assert res.exit_code == 1
    assert "--train-data" in res.output and "does not match model input" in res.output


def test_help_shows_plain_percent_signs():
    res = CliRunner().invoke(main, ["convert", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "zeroes 80% of the weights" in res.output and "held-out 10%" in res.output and "%%" not in res.output
