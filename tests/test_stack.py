"""The dependency stack: every import works in this venv, without activating it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata


def test_declared_dependencies_are_installed():
    from packaging.requirements import Requirement

    for raw in metadata.requires("edgepack"):
        req = Requirement(raw)
        if req.marker is not None:
            continue
        assert req.specifier.contains(metadata.version(req.name), prereleases=True), raw


def test_onnx2tf_and_runtimes_import_cleanly_in_unactivated_venv():
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # as pipx/CI run tools: the venv's bin dir is not on PATH
    code = ("import onnx2tf, ai_edge_litert.interpreter, tflite_runtime.interpreter, "
            "tflite_micro, tensorflow_model_optimization, onnxruntime, sng4onnx, onnx_graphsurgeon; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().endswith("ok")


def test_help_does_not_import_tensorflow():
    code = "import sys; from edgepack.cli import main; import edgepack.api; print('tensorflow' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr
