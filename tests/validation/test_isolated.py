"""The isolated interpreter child: same numbers as in-process, light (no TensorFlow), gone when closed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.packaging.manifest import read_manifest
from edgepack.runtimes.isolated import IsolatedRunner
from edgepack.runtimes.litert import Runtime, TfliteRunner
from tests.conftest import INPUT_SHAPE


def test_child_matches_in_process_and_stays_light(int8_bundle):
    m = read_manifest(int8_bundle)
    x = np.random.default_rng(0).random((70, *INPUT_SHAPE), dtype=np.float32)
    here = TfliteRunner(Runtime.LITERT, int8_bundle / "model.tflite", m.inputs, m.outputs)({"image": x})[0]
    with IsolatedRunner("litert", int8_bundle / "model.tflite", m.inputs, m.outputs) as run:
        there = run({"image": x})[0]
        pid = run.proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
    np.testing.assert_array_equal(here, there)
    assert "libtensorflow" not in maps  # the child never imports TensorFlow: it starts in a fraction of a second
    assert not Path(f"/proc/{pid}").exists()  # closed and reaped
