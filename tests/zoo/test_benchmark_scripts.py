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
