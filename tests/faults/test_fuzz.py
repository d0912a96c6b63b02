"""Seeded fuzzing of the .tflite and manifest readers: every mutation ends in a result or one
EdgepackError, never another exception (more cases: benchmarks/fuzz.py)."""

from __future__ import annotations

import time

from tests.faults.fuzzing import fuzz_manifest, fuzz_tflite, mutate_bytes


def test_mutations_are_seeded_and_varied(int8_bundle):
    data = (int8_bundle / "model.tflite").read_bytes()
    assert mutate_bytes(data, 7) == mutate_bytes(data, 7)
    assert len({mutate_bytes(data, s) for s in range(50)}) == 50


def test_tflite_reader_survives_300_mutations(int8_bundle):
    start = time.perf_counter()
    outcomes, findings = fuzz_tflite((int8_bundle / "model.tflite").read_bytes(), range(300))
    assert findings == []
    assert outcomes["rejected"] > 100 and outcomes["accepted"] > 10, outcomes  # both paths exercised
    assert time.perf_counter() - start < 20


def test_manifest_reader_survives_300_mutations(int8_bundle, tmp_path):
    outcomes, findings = fuzz_manifest(int8_bundle, tmp_path / "b", range(300))
    assert findings == []
    assert outcomes["rejected"] > 100 and outcomes["accepted"] > 10, outcomes
