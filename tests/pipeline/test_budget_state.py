"""The accuracy budget on a model with a recurrent state input ``[2, 1, H]`` (no sample axis): the
evaluation set and the LiteRT runner feed each sample of the state as one whole tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main
from tests.converter.stream_builders import lstm_state, stream_frames


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget_state")
    model = lstm_state(d / "lstm_state.onnx")
    np.savez(d / "calib.npz", **stream_frames(model, 200, seed=1))
    return d


def _convert(d, out, *budget):
    return CliRunner().invoke(main, ["convert", str(d / "lstm_state.onnx"), "-o", str(d / out), "--quantize",
                                     "int8", "--calibration", str(d / "calib.npz"), *budget])


def _budget(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["budget"]


def test_min_sqnr_on_a_state_input_is_met_and_recorded(lstm):
    res = _convert(lstm, "sqnr", "--min-sqnr", "20")
    assert res.exit_code == 0, res.output
    b = _budget(lstm / "sqnr")
    assert b["budget_met"] and b["budget"] == {"min_sqnr_db": 20.0}
    assert b["eval_data"]["samples"] == 100
    sqnr = b["chosen"]["metric"]["sqnr_db"]
    assert set(sqnr) == {"prob", "stateN"} and min(sqnr.values()) >= 20  # the state output is scored too
    m = json.loads((lstm / "sqnr" / "manifest.json").read_text())
    assert m["inputs"][1]["name"] == "state" and m["inputs"][1]["sample_axis"] is None


def test_a_budget_int8_misses_searches_with_the_state_fed_whole(lstm):
    """Full int8 misses 45 dB: the search runs its per-op local errors and its candidates on the state
    model (interpreter input order, whole state tensors) and ends on one that meets."""
    res = _convert(lstm, "strict", "--min-sqnr", "45")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "unexpectedly" not in res.output
    b = _budget(lstm / "strict")
    steps = [c["step"] for c in b["candidates"]]
    assert steps[0] == "int8" and not b["candidates"][0]["met"] and len(steps) > 2
    assert b["budget_met"] and min(b["chosen"]["metric"]["sqnr_db"].values()) >= 45


def test_min_agreement_without_a_class_output_is_one_line(lstm):
    """silero-style outputs: one probability and the state; no top-1 decision to agree on (the state's
    argmax is not one), so --min-agreement is refused in one line, not an internal error."""
    res = _convert(lstm, "agree", "--min-agreement", "0.9")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--min-agreement: no output of the model has a class axis" in lines[0]
    assert "stateN (2x1x4, state)" in lines[0] and "unexpectedly" not in res.stderr
    assert not (lstm / "agree").exists()


def test_task_metric_budget_on_a_state_model(lstm, tmp_path):
    metric = tmp_path / "decide.py"
    metric.write_text("import numpy as np\n\n\ndef decide(outputs, references, labels=None):\n"
                      "    return float(np.mean((outputs[0] > 0.5) == (references[0] > 0.5)))\n")
    res = _convert(lstm, "task", "--max-drop", "5", "--metric", f"{metric}:decide")
    assert res.exit_code == 0, res.output
    b = _budget(lstm / "task")
    assert b["budget_met"] and b["chosen"]["metric"]["task_metric_reference"] == 1.0
    assert "agreement" not in b["chosen"]["metric"]["intervals"]  # no top-1 taken from the state
