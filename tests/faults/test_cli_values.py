"""Bad command-line values: one line, exit 2 (usage), nothing written anywhere."""

from __future__ import annotations

import pytest

from tests.faults.conftest import assert_error, leftovers, run_cli, snapshot

CONVERT = [
    (["--calibration-samples", "0"], "--calibration-samples"),
    (["--quantize", "int3"], "--quantize"),
    (["--seed", "x"], "--seed"),
    (["--target", "toaster"], "--target"),
    (["--epochs", "0"], "--epochs"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--prune", "channels:1.5"], "--prune"),
    (["--input-shape", "image:1xAx3"], "--input-shape"),
    (["--fallback", "int8"], "--fallback"),
    (["--fallback", "int16"], "--fallback"),  # without a budget: nothing to fall back from
]


@pytest.mark.parametrize("args, option", CONVERT, ids=[a[0] for a, _ in CONVERT])
def test_bad_convert_values(keras3_model, calib_npy, tmp_path, private_tmpdir, args, option):
    out = tmp_path / "bundle"
    res = run_cli(["convert", keras3_model, "-o", out, "--calibration", calib_npy, *args])
    assert_error(res, 2, option)
    assert not out.exists()
    assert leftovers(tmp_path, private_tmpdir) == []


VALIDATE = [
    (["--max-drop", "nan"], "--max-drop"),
    (["--max-drop", "inf"], "--max-drop"),
    (["--max-drop", "-1"], "--max-drop"),
    (["--runtime", "bogus"], "--runtime"),
]


@pytest.mark.parametrize("args, option", VALIDATE, ids=[" ".join(a) for a, _ in VALIDATE])
def test_bad_validate_values(int8_bundle, labelled_npz, args, option):
    before = snapshot(int8_bundle)
    assert_error(run_cli(["validate", int8_bundle, "--data", labelled_npz, *args]), 2, option)
    assert snapshot(int8_bundle) == before


@pytest.mark.parametrize("args, what", [(["convert"], "MODEL"), (["inspect"], "PATH"),
                                        (["validate", "somewhere"], "--data")])
def test_missing_arguments(args, what):
    assert_error(run_cli(args), 2, what)
