"""TFLite Micro on the host: exact arena, agreement with LiteRT, validate on tflm targets, Ethos-U."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack import api
from edgepack.runtimes import tflm
from edgepack.tflite_model import read_tflite


@pytest.fixture(scope="module")
def m33_bundle(target_bundle) -> Path:
    return target_bundle("cortex-m33")


def test_measured_arena_is_the_smallest_that_allocates(m33_bundle):
    model = (m33_bundle / "model.tflite").read_bytes()
    arena = tflm.measure_arena(model, 1)
    assert tflm._interpreter(model, arena.total) is not None
    assert tflm._interpreter(model, arena.total - 64) is None
    manifest = json.loads((m33_bundle / "manifest.json").read_text())
    assert manifest["extras"]["tflm"]["arena_bytes"] == arena.total


def test_unloadable_model_is_one_clear_error():
    from edgepack.errors import RuntimeUnavailable
    from edgepack.runtimes.tflm_ops import probe_model

    with pytest.raises(RuntimeUnavailable, match="TFLite Micro cannot load the model"):
        tflm.measure_arena(probe_model(150), 0)  # a bare GELU: no kernel in TFLM


def test_validate_runs_tflm_and_litert(m33_bundle, labelled_npz):
    report = api.validate(bundle=m33_bundle, data=labelled_npz)
    section = report.runtimes["tflm"]
    assert section["accuracy"] == pytest.approx(report.accuracy_bundle, abs=1 / 64)
    assert section["top1_agreement_vs_litert"] >= 0.98
    assert section["max_diff_steps_vs_litert"] <= 1  # same int8 kernels up to rounding
    stored = json.loads((m33_bundle / "validation.json").read_text())
    assert stored["runtimes"]["tflm"]["arena_bytes"] == section["arena_bytes"] > 0


def test_run_tflm_matches_litert_per_sample(m33_bundle, labelled_npz):
    from edgepack.calibration import InputSpec, open_dataset
    from edgepack.packaging.manifest import read_manifest
    from edgepack.runtimes.isolated import run_dataset

    m = read_manifest(m33_bundle)
    ds = open_dataset(labelled_npz, [InputSpec("image", (8, 8, 1), "float32")], what="--data")
    model_path = m33_bundle / "model.tflite"
    ours = run_dataset("tflm", model_path, m.inputs, m.outputs, ds)[0]
    lite = run_dataset("litert", model_path, m.inputs, m.outputs, ds)[0]
    assert ours.shape == lite.shape == (64, 4)
    assert np.max(np.abs(ours - lite)) <= m.outputs[0].scale * 1.01


def test_ethos_u_target_packs_vela_model_and_report(tmp_path, keras3_model, calib_npy, labelled_npz):
    out = tmp_path / "u55"
    result = api.convert(model=keras3_model, output=out, calibration=calib_npy, target="cortex-m55-ethos-u55")
    vela = result.manifest.extras["vela"]
    assert vela["accelerator"] == "ethos-u55-128"
    assert vela["sram_bytes"] > 0 and vela["flash_bytes"] > 0 and vela["cycles_total"] > 0
    assert vela["npu_ops"] >= 1 and vela["inference_seconds"] > 0
    compiled = read_tflite(out / "model_vela.tflite")
    assert compiled.op_counts.get("CUSTOM:ethos-u") == 1
    assert {"model_vela.tflite", "model.tflite"} <= {a.path for a in result.manifest.artifacts}
    assert "AddEthosU()" in (out / "firmware" / "model_ops.h").read_text()
    report = api.validate(bundle=out, data=labelled_npz)
    assert any("cannot run the Ethos-U custom op" in n for n in report.notes)
    assert report.runtimes["tflm"]["accuracy"] is not None


def test_ethos_u_refuses_a_vela_model_over_the_flash_budget(tmp_path, monkeypatch, keras3_model, calib_npy):
    """The budget gates the Vela model (what the device flashes), not only the plain int8 one."""
    import dataclasses

    from edgepack.errors import TargetConstraintError
    from edgepack.pipeline import stages as pipeline
    from edgepack.targets import load_target

    tight = dataclasses.replace(load_target("cortex-m55-ethos-u55"), name="u55-4k-flash", flash_bytes=4096)
    monkeypatch.setattr(pipeline, "load_target", lambda name: tight)
    out = tmp_path / "u55"
    with pytest.raises(TargetConstraintError) as err:
        api.convert(model=keras3_model, output=out, calibration=calib_npy, target="u55-4k-flash")
    msg = str(err.value)
    assert msg.startswith("Vela model needs ") and "over target u55-4k-flash's flash budget of 4096 bytes" in msg
    assert int(msg.split("needs ")[1].split(" bytes")[0]) > 4096
    assert not out.exists()


def test_arena_is_searched_when_tflm_report_is_too_small(tmp_path):
    """Wide 1x1 convs need temporary planning space TFLM's own report leaves out: the measured
    arena must still be one that allocates, and 16 bytes less must not."""
    import keras

    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((2, 2, 64), name="x"), keras.layers.Conv2D(512, 1), keras.layers.Conv2D(512, 1),
                      keras.layers.Flatten(), keras.layers.Dense(4)]).save(tmp_path / "wide.keras")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((20, 2, 2, 64), dtype=np.float32))
    api.convert(model=tmp_path / "wide.keras", output=tmp_path / "b", calibration=tmp_path / "c.npy",
                target="cortex-m7")
    model = (tmp_path / "b" / "model.tflite").read_bytes()
    arena = tflm.measure_arena(model, 1)
    assert tflm._interpreter(model, arena.total) is not None
    assert tflm._interpreter(model, arena.total - 16) is None
    assert arena.total > arena.head + arena.tail  # more than the report's head + tail
