"""Never a traceback: an unexpected exception in any stage reaches the user as one line naming the
stage, exit 1, with the full traceback in a log file whose path the line gives (-vv prints it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.pipeline import run as pipeline
from tests.conftest import save_model

STAGE_NAMES = [name for name, _ in pipeline.STAGES]


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return save_model("keras3", tmp_path_factory.mktemp("model"))


def _boom(st):
    raise ZeroDivisionError("synthetic failure")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_unexpected_exception_in_every_stage_is_one_line_with_a_log(stage, keras_model, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", tuple((n, _boom if n == stage else fn) for n, fn in pipeline.STAGES))
    monkeypatch.setenv("EDGEPACK_LOG_DIR", str(tmp_path / "logs"))
    out = tmp_path / "bundle"
    res = CliRunner().invoke(main, ["convert", str(keras_model), "-o", str(out), "--quantize", "none"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.stderr
    assert f"stage '{stage}' failed unexpectedly: ZeroDivisionError: synthetic failure" in lines[0]
    log = Path(re.search(r"full traceback: (\S+)\)", lines[0]).group(1))
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "_boom" in text
    assert not out.exists() and not list(tmp_path.glob(".bundle*"))


def test_minus_vv_prints_the_traceback(keras_model, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", tuple((n, _boom if n == "convert" else fn) for n, fn in pipeline.STAGES))
    monkeypatch.setenv("EDGEPACK_LOG_DIR", str(tmp_path / "logs"))
    res = CliRunner().invoke(main, ["convert", str(keras_model), "-o", str(tmp_path / "b"), "--quantize", "none",
                                    "-vv"])
    assert res.exit_code == 1
    assert "Traceback (most recent call last)" in res.stderr and "ZeroDivisionError" in res.stderr


def test_unexpected_exception_outside_the_pipeline_is_one_line(tmp_path, monkeypatch):
    from edgepack import api

    monkeypatch.setattr(api, "targets", lambda: 1 / 0)
    monkeypatch.setenv("EDGEPACK_LOG_DIR", str(tmp_path / "logs"))
    res = CliRunner().invoke(main, ["targets"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "stage 'targets' failed unexpectedly" in lines[0]
    assert len(list((tmp_path / "logs").iterdir())) == 1


@pytest.mark.parametrize("args,needle", [
    (["convert", "m.keras", "-o", "o", "--quantize", "int9"], "Invalid value for '--quantize'"),
    (["validate", "b", "--data", "d.npz", "--max-drop", "nan"], "'nan' is not a finite number"),
    (["validate", "b", "--data", "d.npz", "--max-drop", "inf"], "'inf' is not a finite number"),
    (["convert", "m.keras", "-o", "o", "--learning-rate", "nan"], "not a finite number"),
    (["validate", "b", "--data", "d.npz", "--max-drop", "-1"], "below the minimum"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["convert"], "no model given"),
])
def test_click_usage_errors_are_one_line_exit_2(args, needle):
    res = CliRunner().invoke(main, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.stderr
    assert lines[0].startswith("error: ") and "Usage:" not in res.stderr
