"""The catalogue's own helpers: a test that cannot fail is a defect, so check they do fail."""

from __future__ import annotations

import pytest

from tests.faults.conftest import one_line, run_cli, snapshot


def test_one_line_rejects_tracebacks_and_extra_lines():
    assert one_line("error: x is broken; do y\n", "x is broken") == "error: x is broken; do y"
    for bad in ("Traceback (most recent call last):\nerror: x", "WARNING: w\nerror: x", "", "x without prefix"):
        with pytest.raises(AssertionError):
            one_line(bad)


def test_run_cli_reports_escaped_exceptions_as_tracebacks(tmp_path):
    res = run_cli(["inspect", tmp_path / "missing.tflite"])
    assert res.code == 1
    one_line(res.stderr, "missing.tflite")


def test_snapshot_sees_a_flipped_byte(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    before = snapshot(tmp_path)
    (tmp_path / "a").write_bytes(b"abd")
    assert snapshot(tmp_path) != before


def test_run_limited_measures_the_case_alone():
    from tests.faults.conftest import run_limited

    result = run_limited(["targets"])
    assert result.code == 0, result.stderr
    assert "cortex-m4" in result.stdout
    # the CLI's listing imports no TensorFlow: a few tens of MiB, not the test process's own gigabyte
    assert 5 << 20 < result.peak_rss < 300 << 20, result.peak_rss
    assert 0 < result.seconds < 30


def test_run_limited_caps_the_address_space():
    from tests.faults.conftest import run_limited

    # 64 MiB of address space: the interpreter cannot even start its imports, so the child fails
    result = run_limited(["targets"], address_space=64 << 20)
    assert result.code != 0
