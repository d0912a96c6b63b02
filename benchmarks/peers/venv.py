"""Build the peers' venv: NNCF 3.4 (ONNX backend, no torch) and tf2onnx, never dependencies of edgepack.

    /work/main/.venv/bin/python benchmarks/peers/venv.py            # -> build/peers-venv
    /work/main/.venv/bin/python benchmarks/peers/venv.py --path DIR --force

The venv reads the project venv's packages (numpy 1.26.4, onnx 1.19.1, onnxruntime 1.23.0, TensorFlow,
scipy, networkx, rich...) through a ``.pth`` file, so both sides run the very same onnx/onnxruntime; it
holds only what the project venv lacks, every one pinned and installed with ``--no-deps`` (NNCF's own
requirements would pull torch-free but unpinned numpy/scipy upgrades into a venv that must match):

- ``nncf==3.4.0`` and what its ONNX backend imports that the project venv lacks (pydot, tabulate,
  openvino-telemetry, safetensors); ``ninja`` is only for its torch extensions and is not installed;
- ``tf2onnx==1.17.0``: exports the project's Keras nets to ONNX for the onnxruntime and NNCF peers.

With this protobuf (4.25) two NNCF modules fail at import: their annotations ``onnx.TensorProto.DataType |
np.dtype`` and ``onnx.ValueInfoProto | onnx.TensorProto`` are evaluated when the module loads and protobuf's
classes do not support ``|``. They are patched here, once, at install time, by adding ``from __future__
import annotations`` (annotations become strings; nothing else changes). Then a tiny Conv+ReLU model is
quantized as the check. edgepack itself never imports anything from this venv.
"""

from __future__ import annotations

import argparse
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "build" / "peers-venv"
PACKAGES = ["nncf==3.4.0", "tf2onnx==1.17.0", "pydot==4.0.1", "tabulate==0.9.0", "openvino-telemetry==2025.2.0",
            "safetensors==0.8.0"]
PATCHED = ["nncf/onnx/quantization/quantizer_parameters.py", "nncf/onnx/graph/onnx_helper.py"]
FUTURE = "from __future__ import annotations\n"
CHECK = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import nncf
w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["y"], ["z"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
data = [{"x": np.random.default_rng(i).random((1, 3, 8, 8), dtype=np.float32)} for i in range(8)]
q = nncf.quantize(m, nncf.Dataset(data), subset_size=8)
assert "QuantizeLinear" in [n.op_type for n in q.graph.node], "nncf left the model unquantized"
import tf2onnx
print("nncf", nncf.__version__, "tf2onnx", tf2onnx.__version__)
"""


def venv_python(path: Path = DEFAULT) -> Path:
    return path / "bin" / "python"


def patch(site_packages: Path) -> list[str]:
    """Add the ``__future__`` import to each module of PATCHED that lacks it (after its license comment)."""
    done = []
    for rel in PATCHED:
        f = site_packages / rel
        lines = f.read_text().splitlines(keepends=True)
        if FUTURE in lines:
            continue
        at = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
        f.write_text("".join([*lines[:at], FUTURE, "\n", *lines[at:]]))
        done.append(rel)
    return done


def build(path: Path, force: bool) -> None:
    if path.exists():
        if not force:
            sys.exit(f"error: {path} exists; pass --force to build it again")
        shutil.rmtree(path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    py = venv_python(path)
    target = Path(subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                 capture_output=True, text=True).stdout.strip())
    # after the venv's own site-packages: the project's packages, read-only from here
    (target / "zz_project_venv.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *PACKAGES], check=True)
    print("patched:", ", ".join(patch(target)) or "nothing (already patched)")
    subprocess.run([str(py), "-c", CHECK], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, default=DEFAULT)
    ap.add_argument("--force", action="store_true", help="remove and rebuild an existing venv")
    args = ap.parse_args()
    if sys.prefix == sys.base_prefix:
        sys.exit("error: run this with the project's venv python (/work/main/.venv/bin/python or .venv/bin/python)")
    build(args.path, args.force)


if __name__ == "__main__":
    main()
