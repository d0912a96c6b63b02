"""Every benchmark script and helper module imports: a helper renamed in one script and still imported by
another (``convert_speed`` imported ``ptq_peers.ort_static`` after it moved to ``peers/ort_child``) fails
here, not in the next person's hour-long run."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import benchmarks

MODULES = sorted(m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks."))


def test_the_benchmarks_are_all_found():
    assert {"benchmarks.convert_speed", "benchmarks.ptq_peers", "benchmarks.peers.ort_child",
            "benchmarks.model_zoo", "benchmarks.vad_int8", "benchmarks.zoo.corpus"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name):
    module = importlib.import_module(name)
    if name.count(".") == 1 and hasattr(module, "main"):  # a script: its entry point is callable
        assert callable(module.main)


def test_convert_speed_table_gives_the_upstream_ratios_and_says_where_upstream_failed():
    from benchmarks.convert_speed import table

    base = {"load_1min": 1.0, "load_1min_end": 1.0, "ort_before": 3.0, "ort_after": 5.0}
    rows = [{**base, "model": "a", "edgepack": {"seconds": 12.0}, "upstream": {"seconds": 24.0, "onnx2tf": 3.0}},
            {**base, "model": "b", "edgepack": {"seconds": 40.0},
             "upstream": {"plain": "onnx2tf: ValueError", "onnx2tf": 5.5, "failed": "TensorFlow's converter: signal 11"}}]
    lines = table(rows, []).splitlines()
    assert "onnx2tf + TF converter s" in lines[0]
    cells = [c.strip() for c in lines[2].split("|")]
    assert cells[5:10] == ["3.00x", "24.0 (onnx2tf 3.0)", "6.00x", "0.50x", "-"]
    assert "TensorFlow's converter: signal 11 (on edgepack's prepared graph: plain onnx2tf fails)" in lines[3]
