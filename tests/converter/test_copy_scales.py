"""A byte-copying int8 op whose output grid is not its input's (TF 2.19 gives a bidirectional LSTM's
REVERSE_V2 the concatenation's scale) gets a requantize after it: full int8 for a microcontroller, a
tiny BiLSTM, SQNR against onnxruntime on LiteRT and on TFLite Micro, with and without the fix."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.converter import copy_scales, requantize
from edgepack.converter.copy_scales import requantize_copies, scale_mismatches
from edgepack.packaging.manifest import read_manifest
from edgepack.tflite_model import op_kinds
from edgepack.validation.metrics import sqnr_db as _sqnr
from tests.optimize.test_ptq_lstm import FEATURES, STEPS, _bilstm

HELD = 48


def _run(model: bytes, manifest, held: np.ndarray, runtime: str) -> np.ndarray:
    """Dequantized outputs of ``held`` (source layout) on LiteRT or TFLite Micro, one sample per invoke."""
    from edgepack.runtimes.litert import dequantize, quantize

    i, o = manifest.inputs[0], manifest.outputs[0]
    if runtime == "tflm":
        from edgepack.runtimes import tflm

        interp = tflm._interpreter(model, tflm.measure_arena(model, 1).total)
        set_in, get_out = (lambda x: interp.set_input(x, 0)), (lambda: interp.get_output(0))
    else:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_content=model)
        interp.allocate_tensors()
        set_in = lambda x: interp.set_tensor(interp.get_input_details()[0]["index"], x)  # noqa: E731
        get_out = lambda: interp.get_tensor(interp.get_output_details()[0]["index"])  # noqa: E731
    outs = []
    for s in held:
        set_in(quantize(s[None].transpose(i.perm), i).reshape(i.shape))
        interp.invoke()
        outs.append(dequantize(np.asarray(get_out()), o))
    return np.stack(outs)


@pytest.fixture(scope="module")
def bilstm(tmp_path_factory):
    import onnxruntime as ort

    tmp = tmp_path_factory.mktemp("bilstm")
    model = _bilstm(tmp / "bilstm.onnx")
    x = np.random.default_rng(1).normal(0, 1, (100 + HELD, STEPS, FEATURES)).astype(np.float32)
    np.save(tmp / "calib.npy", x[:100])
    sess = ort.InferenceSession(str(model))
    ref = np.stack([sess.run(None, {"x": s[None]})[0] for s in x[100:]])
    return tmp, model, x[100:], ref


def _convert(tmp, model, name: str):
    out = tmp / name
    api.convert(model=model, output=out, quantize="int8", calibration=tmp / "calib.npy", target="cortex-m4")
    return (out / "model.tflite").read_bytes(), read_manifest(out)


def test_reverse_gets_a_requantize_in_full_int8_on_tflm_too(bilstm, monkeypatch):
    tmp, model, held, ref = bilstm
    fixed, manifest = _convert(tmp, model, "fixed")
    assert scale_mismatches(fixed) == []
    # the REVERSE_V2 of the backward direction now writes its input's grid, a QUANTIZE int8 -> int8 follows
    from edgepack.converter.requantize import _unpack

    obj = _unpack(fixed)
    sg = obj.subgraphs[0]
    requants = [op for kind, op in zip(op_kinds(obj), sg.operators) if kind == "QUANTIZE"
                and sg.tensors[op.inputs[0]].type == sg.tensors[op.outputs[0]].type == 9]  # INT8
    assert requants and all(sg.tensors[op.inputs[0]].name.endswith(b"/input_grid") for op in requants)
    sqnr = {rt: _sqnr(ref, _run(fixed, manifest, held, rt).reshape(ref.shape)) for rt in ("litert", "tflm")}

    # the converter without the fix: the same conversion, the copy read on the concatenation's grid
    monkeypatch.setattr(copy_scales, "requantize_copies", lambda m: (m, []))
    monkeypatch.setattr(requantize, "requantize_copies", lambda m: (m, []))
    broken, manifest_b = _convert(tmp, model, "broken")
    assert scale_mismatches(broken)
    # the in-place check that lets models without a mismatch skip the unpacking sees the same
    assert copy_scales._mismatches(broken) and not copy_scales._mismatches(fixed)
    before = {rt: _sqnr(ref, _run(broken, manifest_b, held, rt).reshape(ref.shape)) for rt in ("litert", "tflm")}
    print("SQNR with the fix", sqnr, "without", before)
    # measured: LiteRT 23.3 -> 29.0 dB, TFLM the same up to rounding
    assert sqnr["litert"] > before["litert"] + 3, (sqnr, before)
    assert sqnr["tflm"] > before["tflm"] + 3, (sqnr, before)
    assert abs(sqnr["tflm"] - sqnr["litert"]) < 1.0, sqnr
    # and the fix alone turns the broken model into the fixed one (same ops, a QUANTIZE more)
    again, names = requantize_copies(broken)
    assert names == scale_mismatches(broken) and scale_mismatches(again) == []
    assert len(_unpack(again).subgraphs[0].operators) == len(_unpack(broken).subgraphs[0].operators) + len(requants)


def test_nothing_to_fix_leaves_the_bytes(bilstm):
    tmp, model, _, _ = bilstm
    fixed = (tmp / "fixed" / "model.tflite").read_bytes() if (tmp / "fixed").exists() else _convert(tmp, model, "f2")[0]
    assert requantize_copies(fixed) == (fixed, [])
