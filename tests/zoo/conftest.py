"""The zoo's real models for the tests: fetched once into build/zoo (the benchmark's cache).

The fetching, extraction, inputs and metrics are ``benchmarks/zoo`` — one copy of that code, imported
as a package (the repository root is on sys.path under pytest), so the tests measure exactly what
docs/model-zoo.md reports. The only skip: the package index cannot be reached.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.zoo import corpus


@pytest.fixture(scope="session")
def zoo_model():
    def get(name: str) -> tuple[corpus.ZooModel, Path]:
        model = corpus.by_name([name])[0]
        try:
            return model, corpus.model_path(model)
        except corpus.RegistryUnreachable as err:
            pytest.skip(f"zoo model {name} not fetched: {err}")

    return get
