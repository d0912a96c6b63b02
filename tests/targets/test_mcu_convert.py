"""Converting for microcontroller targets: fixed batch, measured arena, firmware files, budget gates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.errors import TargetConstraintError
from edgepack.tflite_model import read_tflite


@pytest.fixture(scope="module")
def m4_bundle(target_bundle) -> Path:
    return target_bundle("cortex-m4")


def test_fixed_batch_has_no_shape_ops(m4_bundle):
    info = read_tflite(m4_bundle / "model.tflite")
    assert {"SHAPE", "STRIDED_SLICE", "PACK"}.isdisjoint(info.op_counts)
    assert info.tensor(info.inputs[0]).shape_signature in (None, (1, 8, 8, 1))
    assert info.tensor(info.inputs[0]).shape == (1, 8, 8, 1)


def test_manifest_records_measured_arena_and_firmware(m4_bundle):
    m = json.loads((m4_bundle / "manifest.json").read_text())
    tflm = m["extras"]["tflm"]
    assert 1000 < tflm["arena_bytes"] < 64 * 1024
    assert tflm["arena_head_bytes"] + tflm["arena_tail_bytes"] <= tflm["arena_bytes"]
    arts = {a["path"]: a["role"] for a in m["artifacts"]}
    for name in ("model_data.cc", "model_data.h", "model_ops.h", "model_settings.h", "README.md"):
        assert arts[f"firmware/{name}"] == "firmware"
    settings = (m4_bundle / "firmware" / "model_settings.h").read_text()
    assert f"kMeasuredArenaSize = {tflm['arena_bytes']};" in settings
    assert f"kTensorArenaSize = {tflm['firmware']['tensor_arena_size']};" in settings
    ops_h = (m4_bundle / "firmware" / "model_ops.h").read_text()
    assert f"kNumOps = {len(m['ops'])};" in ops_h and "AddConv2D()" in ops_h
    stages = {s["name"]: s["detail"] for s in m["stages"]}
    assert stages["check_target"]["arena"].startswith("arena ") and "RAM budget 256.0 KiB" in stages["check_target"]["arena"]


def test_model_over_ram_budget_is_refused_with_numbers(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((128, 128, 3), name="image"),
                              keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.save(tmp_path / "big.keras")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((4, 128, 128, 3), dtype=np.float32))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "big.keras"), "-o", str(out), "--target", "cortex-m4",
                                    "--calibration", str(tmp_path / "calib.npy")])
    assert res.exit_code == 1, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1
    assert "tensor arena needs" in line[0] and "over target cortex-m4's RAM budget of 262144 bytes" in line[0]
    needed = int(line[0].split("tensor arena needs ")[1].split(" bytes")[0])
    assert needed > 128 * 128 * 16  # at least the conv output lives in the arena
    assert not out.exists()


def test_unsupported_op_is_named(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,), name="x"), keras.layers.Dense(8, activation="gelu"),
                              keras.layers.Dense(3)])
    model.save(tmp_path / "gelu.keras")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((8, 16), dtype=np.float32))
    with pytest.raises(TargetConstraintError, match=r"ops not supported by tflm on target esp32-s3: GELU x1$"):
        api.convert(model=tmp_path / "gelu.keras", output=tmp_path / "out", calibration=tmp_path / "calib.npy",
                    target="esp32-s3")
    assert not (tmp_path / "out").exists()


def test_microcontroller_refuses_float_modes(tmp_path, keras3_model):
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(tmp_path / "o"), "--target", "cortex-m7",
                                    "--quantize", "float16"])
    assert res.exit_code == 2 and "not supported by target cortex-m7" in res.output
