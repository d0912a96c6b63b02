"""``nncf.quantize`` (ONNX backend, default preset) on the same calibration samples, run with the peers
venv's python (``venv.py``); the benchmark calls it through ``child.run``.

    build/peers-venv/bin/python benchmarks/peers/nncf_child.py MODEL CALIB.npz OUT.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import nncf
    import onnx

    model, calib, out = sys.argv[1:4]
    with np.load(calib) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    data = [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]
    quantized = nncf.quantize(onnx.load(model), nncf.Dataset(data), subset_size=n)
    onnx.save(quantized, str(Path(out)))


if __name__ == "__main__":
    main()
