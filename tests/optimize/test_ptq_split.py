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
    split_bundle, m = _convert(tmp_path, model, "split")  # on by default
    plain_bundle, m_plain = _convert(tmp_path, model, "plain", no_ptq=["split"])
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


def test_split_restores_the_channel_order_with_a_gather_when_no_conv_reads_it(tmp_path):
    """The depthwise output is the graph's output: no convolution to permute, so a Gather puts the channels
    back; the float function is unchanged (onnxruntime, before and after)."""
    import onnx

    from edgepack.optimize.ptq import split
    from edgepack.optimize.ptq.onnx_face import max_rel_difference

    proto = onnx.load(str(depthwise_imbalance(tmp_path / "dw.onnx")))
    graph = proto.graph
    keep = [n for n in graph.node if n.name in ("conv1", "hswish1", "dw")]
    del graph.node[:]
    graph.node.extend(keep)
    graph.output[0].name, graph.output[0].type.tensor_type.shape.dim[1].dim_value = "d", 8
    del graph.initializer[[t.name for t in graph.initializer].index("w3")]
    rng = np.random.default_rng(8)
    feeds = [{"image": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(6)]
    new, rec = split.split_onnx(proto, feeds[:4])
    assert rec["split"] == 1 and rec["layers"][0]["order"] == "gather"
    assert [n.op_type for n in new.graph.node].count("Gather") == 1
    assert max_rel_difference(proto, new, feeds[4:]) < 1e-5


def test_channels_of_like_ranges_stay_one_group():
    from edgepack.optimize.ptq.split import choose_groups

    lo, hi = -np.linspace(1, 1.5, 16), np.linspace(8, 12, 16)  # within 1.5x: one int8 grid serves them all
    groups, gain = choose_groups([np.stack([lo, hi])], np.ones(16))
    assert len(groups) == 1 and gain == 0.0
    hi[:3] = 0.05  # three channels 200x smaller ...
    weight2 = np.ones(16)
    groups, gain = choose_groups([np.stack([lo * 0 - 0.01, hi])], weight2)
    assert len(groups) == 1  # ... whose kernels are no larger: their int8 noise reaches the output as small
    weight2[:3] = 200.0**2  # ... and kernels 200x larger: as loud at the output, so they get their own grid
    groups, gain = choose_groups([np.stack([lo * 0 - 0.01, hi])], weight2)
    assert sorted(map(len, groups))[0] == 3 and gain > 20
