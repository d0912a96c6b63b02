"""Bad calibration and evaluation data: one line naming the file, exit 1, no bundle, no leftovers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tests.conftest import INPUT_SHAPE
from tests.faults.conftest import assert_error, leftovers, run_cli, snapshot


def _write(path, kind: str):
    if kind == "zero_d":
        np.save(path, np.float32(3.0))
    elif kind == "nan":
        x = np.random.default_rng(0).random((40, *INPUT_SHAPE), dtype=np.float32)
        x[7, 0, 0, 0] = np.nan
        np.save(path, x)
    elif kind == "wrong_shape":
        np.save(path, np.zeros((40, 5, 5, 1), np.float32))
    elif kind == "pickled":
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    elif kind == "truncated":
        np.save(path, np.zeros((40, *INPUT_SHAPE), np.float32))
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "not_npy":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    return path


CASES = [("zero_d", "a single value (a 0-d array)"), ("nan", "sample 7"), ("wrong_shape", "does not match"),
         ("pickled", "pickled Python objects"), ("truncated", "truncated"), ("not_npy", "not a readable .npy")]


@pytest.mark.parametrize("kind, why", CASES)
def test_bad_calibration_data(keras3_model, tmp_path, private_tmpdir, kind, why):
    data = _write(tmp_path / "calib.npy", kind)
    out = tmp_path / "bundle"
    res = run_cli(["convert", keras3_model, "-o", out, "--calibration", data])
    assert_error(res, 1, "--calibration", "calib.npy", why)
    assert not out.exists()
    assert leftovers(tmp_path, private_tmpdir) == []


@pytest.mark.parametrize("kind, why", [c for c in CASES if c[0] != "nan"])
def test_bad_validation_data(int8_bundle, tmp_path, kind, why):
    data = _write(tmp_path / "heldout.npy", kind)
    before = snapshot(int8_bundle)
    res = run_cli(["validate", int8_bundle, "--data", data])
    assert_error(res, 1, "--data", "heldout.npy", why)
    assert snapshot(int8_bundle) == before


def test_zero_d_labels(int8_bundle, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, *INPUT_SHAPE), np.float32), y=np.int64(1))
    before = snapshot(int8_bundle)
    assert_error(run_cli(["validate", int8_bundle, "--data", tmp_path / "d.npz"]), 1, "labels hold a single value")
    assert snapshot(int8_bundle) == before
