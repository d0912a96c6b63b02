"""A fast, representative subset of the ONNX backend node tests through edgepack's conversion.

The full run is ``benchmarks/onnx_conformance.py`` (results in docs/onnx-coverage.md); the cases
here cover elementwise, broadcasting, pooling, layout-sensitive, matrix and reshaping ops, one int8
run calibrated on the case's own inputs, and one known onnx2tf failure reported cleanly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "onnx_conformance", Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_conformance.py")
conformance = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("onnx_conformance", conformance)  # dataclasses look their module up
_SPEC.loader.exec_module(conformance)

FLOAT_CASES = ("test_relu", "test_add_bcast", "test_averagepool_2d_default", "test_maxpool_2d_default",
               "test_softmax_axis_1", "test_transpose_default", "test_matmul_2d", "test_sigmoid")
INT8_CASES = ("test_depthtospace_crd_mode_example",)


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
