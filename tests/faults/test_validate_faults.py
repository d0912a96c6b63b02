"""validate on broken bundles and mismatched references: one line, exit 1, nothing changed, and a
native crash in an interpreter never takes edgepack down (interpreters run in a child process)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from edgepack.errors import RuntimeUnavailable
from edgepack.packaging.bundle import sha256_bytes
from edgepack.packaging.manifest import read_manifest
from edgepack.runtimes import isolated
from tests.conftest import INPUT_SHAPE
from tests.faults.conftest import assert_error, run_cli, snapshot
from tests.faults.fuzzing import mutate_bytes


def _rehash(bundle, data: bytes, *, drop_source: bool = True) -> None:
    """Write ``data`` as the bundle's model and make the manifest agree with it (what an attacker
    or a careless tool would do), optionally forgetting the source model so no reference runs."""
    (bundle / "model.tflite").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["path"] == "model.tflite":
            art["sha256"], art["bytes"] = sha256_bytes(data), len(data)
    if drop_source:
        manifest["source"]["path"] = str(bundle / "gone.keras")
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("seed", range(25))
def test_validate_on_a_corrupt_model_with_a_matching_hash(bundle_copy, labelled_npz, seed):
    _rehash(bundle_copy, mutate_bytes((bundle_copy / "model.tflite").read_bytes(), seed))
    before = snapshot(bundle_copy)
    res = run_cli(["validate", bundle_copy, "--data", labelled_npz, "-q", "--json"])
    assert res.code in (0, 1), res
    if res.code == 1:
        assert_error(res, 1)
        assert snapshot(bundle_copy) == before
    else:  # the flip hit weights or scales: a well-formed model that runs
        assert json.loads(res.stdout)["samples"] == 64


def test_a_crashing_interpreter_is_one_line(int8_bundle, labelled_npz, monkeypatch):
    """The child running LiteRT dies by a real SIGSEGV mid-run; the user sees one line, exit 1."""
    exchange = isolated.IsolatedRunner.__call__

    def crash_then_call(self, chunk):
        os.kill(self.proc.pid, signal.SIGSEGV)
        self.proc.wait()
        return exchange(self, chunk)

    monkeypatch.setattr(isolated.IsolatedRunner, "__call__", crash_then_call)
    before = snapshot(int8_bundle)
    res = run_cli(["validate", int8_bundle, "--data", labelled_npz])
    assert_error(res, 1, "LiteRT crashed (SIGSEGV)", "model.tflite")
    assert snapshot(int8_bundle) == before


def test_isolated_runner_matches_and_reports_errors(int8_bundle):
    m = read_manifest(int8_bundle)
    x = np.random.default_rng(0).random((5, *INPUT_SHAPE), dtype=np.float32)
    with isolated.IsolatedRunner("litert", int8_bundle / "model.tflite", m.inputs, m.outputs) as run:
        assert run({"image": x})[0].shape == (5, 4)
        with pytest.raises(RuntimeUnavailable, match="LiteRT failed: ValueError"):
            run({"image": x[:, :4]})  # wrong sample shape: the interpreter's own error, one line
    assert run.proc is None  # closed


def test_reference_with_other_input_names(int8_bundle, labelled_npz, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    other = keras.Sequential([keras.Input(INPUT_SHAPE, name="pixels"), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    other.save(tmp_path / "other.keras")
    before = snapshot(int8_bundle)
    res = run_cli(["validate", int8_bundle, "--data", labelled_npz, "--reference", tmp_path / "other.keras"])
    assert_error(res, 1, "--reference", "other.keras", "['pixels']", "['image']")
    assert snapshot(int8_bundle) == before


def test_reference_with_other_output_shape(int8_bundle, labelled_npz, tmp_path):
    import keras

    other = keras.Sequential([keras.Input(INPUT_SHAPE, name="image"), keras.layers.Flatten(), keras.layers.Dense(3)])
    other.save(tmp_path / "three.keras")
    res = run_cli(["validate", int8_bundle, "--data", labelled_npz, "--reference", tmp_path / "three.keras"])
    assert_error(res, 1, "--reference output for 'logits' has shape [64, 3]", "[64, 4]")
