"""CLI exit codes and the one-line messages users see."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    msg = lines[-1]
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_missing_model(tmp_path):
    r = run("convert", tmp_path / "nope.keras", "-o", tmp_path / "out", "--quantize", "none")
    assert_one_line_error(r, 1, "nope.keras", "no such file")
    assert not (tmp_path / "out").exists()


def test_corrupt_model(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"this is not a keras archive")
    r = run("convert", bad, "-o", tmp_path / "out", "--quantize", "none")
    assert_one_line_error(r, 1, "model.keras", "corrupt")
    trunc = tmp_path / "trunc.keras"
    trunc.write_bytes(b"PK\x03\x04" + b"\0" * 30)
    assert_one_line_error(run("convert", trunc, "-o", tmp_path / "out", "--quantize", "none"), 1, "corrupt")


def test_unknown_format(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 64)
    assert_one_line_error(run("convert", f, "-o", tmp_path / "o", "--quantize", "none"), 1, "unknown model format")


def test_int8_without_calibration_is_a_usage_error(keras3_model, tmp_path):
    r = run("convert", keras3_model, "-o", tmp_path / "out")
    assert_one_line_error(r, 2, "--quantize int8 needs calibration data", "--calibration")


def test_unknown_target(keras3_model, tmp_path):
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--quantize", "none", "--target", "toaster")
    assert_one_line_error(r, 2, "'toaster'", "--target", "generic")


def test_unknown_quantize_mode_is_click_usage(keras3_model, tmp_path):
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--quantize", "int4")
    assert r.exit_code == 2


def test_existing_output_without_force(keras3_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run("convert", keras3_model, "-o", out, "--quantize", "none")
    assert_one_line_error(r, 1, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    r = run("convert", keras3_model, "-o", out, "--quantize", "none", "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "model.tflite").is_file()


@pytest.mark.parametrize("case", ["shape", "dtype", "nan", "inf", "pickled", "empty"])
def test_bad_calibration_data(case, keras3_model, tmp_path):
    path = tmp_path / "calib.npy"
    rng = np.random.default_rng(0)
    if case == "shape":
        np.save(path, rng.random((10, 8, 8, 3), dtype=np.float32))
        frags = ["(8, 8, 3)", "(8, 8, 1)", "calib.npy"]
    elif case == "dtype":
        np.save(path, np.ones((10, 8, 8, 1), dtype=np.complex64))
        frags = ["complex64", "calib.npy"]
    elif case in ("nan", "inf"):
        x = rng.random((10, 8, 8, 1), dtype=np.float32)
        x[7, 2, 3, 0] = np.nan if case == "nan" else np.inf
        np.save(path, x)
        frags = [f"sample 7 contains {'NaN' if case == 'nan' else 'Inf'}", "calib.npy"]
    elif case == "pickled":
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
        frags = ["pickled", "allow_pickle=False"]
    else:
        np.save(path, np.zeros((0, 8, 8, 1), dtype=np.float32))
        frags = ["0 samples"]
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--calibration", path)
    assert_one_line_error(r, 1, *frags)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_pickle_payload_is_never_executed(keras3_model, tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npy"
    with path.open("wb") as f:
        np.lib.format.write_array(f, np.array([Boom()], dtype=object), allow_pickle=True)
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--calibration", path)
    assert r.exit_code == 1
    assert not marker.exists()


def test_lambda_layer_refused_without_trust(tmp_path, calib_npy):
    import keras

    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Flatten(),
                          keras.layers.Dense(4)])
    m.save(tmp_path / "lam.keras")
    r = run("convert", tmp_path / "lam.keras", "-o", tmp_path / "out", "--quantize", "none")
    assert_one_line_error(r, 1, "Lambda", "--trust-model")
    r = run("convert", tmp_path / "lam.keras", "-o", tmp_path / "out", "--quantize", "none", "--trust-model")
    assert r.exit_code == 0, r.output


def test_labels_count_must_match(keras3_model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--quantize", "none", "--labels", labels)
    assert_one_line_error(r, 2, "3 labels", "4 classes")
    labels.write_text("a\nb\nc\nd\n")
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--quantize", "none", "--labels", labels, "--json")
    assert r.exit_code == 0
    assert (tmp_path / "out/labels.txt").read_text().split() == ["a", "b", "c", "d"]


def test_convert_json_summary(keras3_model, calib_npy, tmp_path):
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--calibration", calib_npy, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["mode"] == "int8"
    assert summary["model_bytes"] == (tmp_path / "out/model.tflite").stat().st_size
    assert summary["inputs"] == ["image"] and summary["outputs"] == ["logits"]


def test_targets_listing_and_show():
    r = run("targets", "--json")
    assert r.exit_code == 0
    names = [t["name"] for t in json.loads(r.stdout)]
    assert {"generic", "android-arm64"} <= set(names)
    assert "phone" not in names  # abstract parent
    r = run("targets", "android-arm64", "--json")
    shown = json.loads(r.stdout)
    assert shown["delegate"] == "xnnpack" and shown["inherits"] == "phone"
    assert "int16x8" not in shown["quantize_modes"]
    assert_one_line_error(run("targets", "nope"), 2, "'nope'")


def test_target_refuses_mode_it_cannot_run(keras3_model, calib_npy, tmp_path):
    r = run("convert", keras3_model, "-o", tmp_path / "o", "--target", "android-arm64", "--quantize", "int16x8",
            "--calibration", calib_npy)
    assert_one_line_error(r, 2, "int16x8", "android-arm64")


def test_python_dash_m_and_quiet_tensorflow(keras3_model, tmp_path):
    """`python -m edgepack` works, and TF's native log noise stays off the terminal without -v."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "edgepack", "convert", str(keras3_model), "-o", str(out),
                        "--quantize", "dynamic"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr
    assert p.stdout.startswith(f"wrote {out}: dynamic model")


@pytest.mark.parametrize("value", ["0", "2", "-1e-3"])
def test_learning_rate_out_of_range_is_a_usage_error(keras3_model, calib_npy, labelled_npz, tmp_path, value):
    r = run("convert", keras3_model, "-o", tmp_path / "out", "--calibration", calib_npy, "--qat",
            "--train-data", labelled_npz, "--learning-rate", value)
    assert_one_line_error(r, 2, "--learning-rate", "(0, 1)")
    assert not (tmp_path / "out").exists()
