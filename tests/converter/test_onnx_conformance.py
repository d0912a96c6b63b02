"""A fast, representative subset of the ONNX backend node tests through edgepack's conversion.

The full run is ``benchmarks/onnx_conformance.py`` (results in docs/onnx-coverage.md); the cases
here cover elementwise, broadcasting, pooling, layout-sensitive, matrix and reshaping ops, one int8
run calibrated on the case's own inputs, and one known onnx2tf failure reported cleanly.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks import onnx_conformance as conformance

FLOAT_CASES = ("test_relu", "test_add_bcast", "test_averagepool_2d_default", "test_maxpool_2d_default",
               "test_softmax_axis_1", "test_transpose_default", "test_matmul_2d", "test_sigmoid",
               # onnxruntime cannot run LpNormalization-22: the output layout comes from the declared shape
               "test_l1normalization_axis_last",
               # integer Mod: the conversion probe once divided by zero in onnxruntime (SIGFPE)
               "test_mod_mixed_sign_int32",
               # a scalar (rank-0) input: onnx2tf gives it one axis, the bundle's tensor has shape [1]
               "test_clip_default_max")
INT8_CASES = ("test_depthtospace_crd_mode_example", "test_maxpool_2d_default")  # the latter: a single-op graph


@pytest.fixture(scope="module")
def cases():
    return {c.name: c for c in conformance.node_cases()}


@pytest.mark.parametrize("name", FLOAT_CASES)
def test_float32_node_case_matches_expected_outputs(cases, tmp_path, name):
    res = conformance.run_case(cases[name], tmp_path, int8=False)
    assert res.float32 == "pass", res.detail


@pytest.mark.parametrize("name", INT8_CASES)
def test_int8_node_case_within_loose_tolerance(cases, tmp_path, name):
    res = conformance.run_case(cases[name], tmp_path, int8=True)
    assert (res.float32, res.int8) == ("pass", "pass"), res.detail


def test_unconvertible_case_is_a_clean_error_naming_the_node(cases, tmp_path):
    """Conv whose weights are a graph input: onnx2tf cannot translate it; edgepack says where."""
    res = conformance.run_case(cases["test_conv_with_strides_padding"], tmp_path, int8=False)
    assert res.float32 == "error"
    assert res.detail.startswith("onnx2tf failed at Conv (node Conv_0): IndexError")


def test_coverage_doc_reports_a_pass_rate():
    r = [conformance.CaseResult("a", "pass", "pass"), conformance.CaseResult("b", "error", "n/a", "x | y"),
         conformance.CaseResult("c", "skip", "n/a")]
    doc = conformance.write_doc(r, 3, "test", 60.0)
    assert "float32 pass rate: 1/2 = 50.0%" in doc and "| b | error | n/a | x / y |" in doc


def test_runner_records_a_crashing_or_hanging_case_and_keeps_its_neighbours(tmp_path):
    """onnx2tf/onnxruntime can kill a worker (SIGFPE) or hang; that case is recorded, the rest still run."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import json, os, signal, sys, time\n"
        "for name in sys.argv[1:]:\n"
        "    if name == 'boom':\n"
        "        os.kill(os.getpid(), signal.SIGFPE)\n"
        "    if name == 'hang':\n"
        "        time.sleep(60)\n"
        "    print(json.dumps({'case': name, 'float32': 'pass', 'int8': 'n/a'}), flush=True)\n")
    results = conformance._run_chunk(["a", "boom", "b", "hang", "c"], case_timeout=2,
                                     command=[sys.executable, str(worker)])
    assert [(r.case, r.float32) for r in results] == [
        ("a", "pass"), ("boom", "crashed"), ("b", "pass"), ("hang", "timeout"), ("c", "pass")]
    assert results[1].detail == "worker killed by SIGFPE"
    assert conformance.rates(results)["float32"] == (3, 5)


def test_integer_only_dtypes_a_bundle_cannot_carry_are_not_applicable():
    assert conformance.not_applicable([np.zeros(2, np.uint32)], [np.zeros(2, np.float32)]).startswith(
        "not applicable: uint32")
    assert conformance.not_applicable([np.zeros(2, np.int8)], [np.zeros(2, np.bool_)]) == ""


def test_doc_from_results_of_runs_split_over_processes(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setattr(conformance, "DOC", tmp_path / "coverage.md")
    monkeypatch.setattr(conformance, "node_cases", lambda: [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    (tmp_path / "1.jsonl").write_text(json.dumps({"case": "a", "float32": "pass", "int8": "n/a"}) + "\n")
    (tmp_path / "2.jsonl").write_text(json.dumps({"case": "b", "float32": "error", "int8": "n/a", "detail": "x"}) + "\n")
    conformance._doc_from_results([tmp_path / "1.jsonl", tmp_path / "2.jsonl"], stride=4)
    doc = (tmp_path / "coverage.md").read_text()
    assert "float32 pass rate: 1/2 = 50.0%" in doc and "every 4th case" in doc and "cases in onnx" in doc
    assert "1/2 = 50.0%" in capsys.readouterr().out
