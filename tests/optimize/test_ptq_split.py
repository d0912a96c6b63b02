"""Channel-group splitting (``optimize/ptq/split.py``) on a tiny ONNX model with PP-LCNet's defect: a
depthwise convolution whose input channels span 200x different ranges behind a hard-swish."""

from __future__ import annotations

import numpy as np

from edgepack import api
from edgepack.packaging.manifest import read_manifest
from tests.optimize.ptq_builders import depthwise_imbalance
from tests.optimize.test_ptq_onnx import _run_int8, _sqnr


def _convert(tmp_path, model, label: str, **flags):
    out = tmp_path / label
    api.convert(model=model, output=out, quantize="int8", calibration=tmp_path / "calib.npy", **flags)
    return out, read_manifest(out)


def test_split_gives_small_depthwise_channels_their_own_int8_scale(tmp_path):
    import onnxruntime as ort

    model = depthwise_imbalance(tmp_path / "dw.onnx")
    x = np.random.default_rng(7).normal(0, 1, (132, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:100])
    sess = ort.InferenceSession(str(model))
    ref = np.concatenate([sess.run(None, {"image": s[None]})[0] for s in x[100:]])
    split_bundle, m = _convert(tmp_path, model, "split", ptq=["split"])
    plain_bundle, m_plain = _convert(tmp_path, model, "plain")  # the default algorithms, without split
    split, plain = _sqnr(ref, _run_int8(split_bundle, x[100:])), _sqnr(ref, _run_int8(plain_bundle, x[100:]))
    rec = m.extras["ptq"]["split"]
    assert rec["chains"] == 1 and rec["split"] == 1 and rec["float_max_rel_difference"] < 1e-4
    layer = rec["layers"][0]
    assert layer["conv1"] == "conv1" and layer["depthwise"] == "dw" and layer["activation"] == "HardSwish"
    assert min(layer["groups"]) <= 2 and sum(layer["groups"]) == 8  # the two small channels apart
    assert layer["order"] == "input channels of pw permuted" and layer["modelled_gain_db"] > 20
    assert "split" not in m_plain.extras["ptq"]
    assert m.quantization.mode == "int8" and m.ops.get("CONCATENATION") == 1 and "GATHER" not in m.ops
    # per group a conv1 and a depthwise conv (a one-channel depthwise conv is written as CONV_2D), and the 1x1 conv
    assert m.ops.get("DEPTHWISE_CONV_2D", 0) + m.ops["CONV_2D"] == 2 * len(layer["groups"]) + 1
    assert m_plain.ops == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "HARD_SWISH": 2}
    assert split > plain + 10, (split, plain)
