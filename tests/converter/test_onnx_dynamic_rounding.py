"""A dynamically quantized ONNX graph (DynamicQuantizeLinear -> ConvInteger / MatMulInteger, the integer
bias path onnxruntime's quantize_dynamic writes) converted to float32 keeps its run-time 8-bit
activation rounding: the bundle reads like onnxruntime on the original, not like its float twin."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.validation.metrics import sqnr_db
from tests.converter.onnx_builders import bundle_nchw as _bundle
from tests.converter.onnx_builders import ort_integer_gemm_is_exact
from tests.converter.onnx_builders import ort_per_sample as _ort


def _integer_conv(prefix: str, x: str, w: np.ndarray, w_zp: int, w_scale: float, bias: np.ndarray, pads: int):
    """onnxruntime's pattern: DQL(x) -> ConvInteger + Floor(b / (xs * ws)) as int32 -> Cast -> * xs * ws."""
    from onnx import TensorProto, helper, numpy_helper

    p = prefix
    inits = [numpy_helper.from_array(w.astype(np.uint8), f"{p}wq"), numpy_helper.from_array(np.uint8(w_zp), f"{p}wzp"),
             numpy_helper.from_array(np.float32(w_scale), f"{p}ws"),
             numpy_helper.from_array(bias.astype(np.float32), f"{p}b"),
             numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), f"{p}shape")]
    nodes = [helper.make_node("DynamicQuantizeLinear", [x], [f"{p}xq", f"{p}xs", f"{p}xz"]),
             helper.make_node("Mul", [f"{p}xs", f"{p}ws"], [f"{p}s"]),
             helper.make_node("Div", [f"{p}b", f"{p}s"], [f"{p}bd"]), helper.make_node("Floor", [f"{p}bd"], [f"{p}bf"]),
             helper.make_node("Cast", [f"{p}bf"], [f"{p}bi"], to=TensorProto.INT32),
             helper.make_node("Reshape", [f"{p}bi", f"{p}shape"], [f"{p}br"]),
             helper.make_node("ConvInteger", [f"{p}xq", f"{p}wq", f"{p}xz", f"{p}wzp"], [f"{p}acc"],
                              pads=[pads] * 4, kernel_shape=list(w.shape[2:])),
             helper.make_node("Add", [f"{p}acc", f"{p}br"], [f"{p}accb"]),
             helper.make_node("Cast", [f"{p}accb"], [f"{p}accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{p}accf", f"{p}s"], [f"{p}y"])]
    return nodes, inits, f"{p}y"


def _swish(x: str, name: str):
    from onnx import helper

    return [helper.make_node("Sigmoid", [x], [f"{name}_sig"]), helper.make_node("Mul", [x, f"{name}_sig"], [name])], name


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    n1, i1, y1 = _integer_conv("c1_", "x", rng.integers(0, 256, (6, 3, 3, 3)), 121, 0.02, rng.normal(0, .3, 6), 1)
    a1, s1 = _swish(y1, "a1")
    n2, i2, y2 = _integer_conv("c2_", s1, rng.integers(0, 256, (8, 6, 3, 3)), 130, 0.01, rng.normal(0, .3, 8), 0)
    a2, s2 = _swish(y2, "a2")
    head = [helper.make_node("Flatten", [s2], ["flat"]),
            helper.make_node("DynamicQuantizeLinear", ["flat"], ["fq", "fs", "fz"]),
            helper.make_node("MatMulInteger", ["fq", "mw", "fz", "mwz"], ["macc"]),
            helper.make_node("Cast", ["macc"], ["maccf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["fs", "mws"], ["ms"]), helper.make_node("Mul", ["maccf", "ms"], ["y"])]
    inits = [*i1, *i2, numpy_helper.from_array(rng.integers(0, 256, (8 * 8 * 8, 5)).astype(np.uint8), "mw"),
             numpy_helper.from_array(np.uint8(119), "mwz"), numpy_helper.from_array(np.float32(0.03), "mws")]
    graph = helper.make_graph([*n1, *a1, *n2, *a2, *head], "dynamic_quantized",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("dynamic") / "dynamic.onnx"
    onnx.save(model, str(path))
    return path


def test_float32_keeps_the_run_time_rounding_and_reads_like_onnxruntime(dynamic_model, tmp_path):
    res = api.convert(model=dynamic_model, output=tmp_path / "b", quantize="none")
    x = np.random.default_rng(7).normal(0.5, 1.0, (24, 3, 10, 10)).astype(np.float32)
    assert sqnr_db(_ort(dynamic_model, x), _bundle(tmp_path / "b", x)) >= 60  # < 50 dB without it (below)
    graph = next(s for s in res.manifest.stages if s.name == "convert").detail["graph"]["dequantized"]
    assert graph["activation_rounding"] == "emulated" and graph["rounding_emulated"] == 3
    assert graph["integer_ops_rewritten"] == 3


def test_without_the_rounding_the_float_graph_is_tens_of_db_away(dynamic_model):
    """The plain rewrite (what int8 calibrates from) is the float twin: this is the gap the emulation closes."""
    import onnx
    import onnxruntime as ort

    from edgepack.converter.onnx.dequantize import dequantize

    x = np.random.default_rng(7).normal(0.5, 1.0, (24, 3, 10, 10)).astype(np.float32)
    want = _ort(dynamic_model, x)
    for emulate, low, high in ((False, 0, 50), (True, 80, np.inf)):
        proto = onnx.load(str(dynamic_model))
        dequantize(proto, emulate_rounding=emulate)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
        assert low <= sqnr_db(want, got) <= high, (emulate, sqnr_db(want, got))


def _dynamic_lstm_model(path):
    """onnxruntime's DynamicQuantizeLSTM (int8 weights, a scale per direction), bidirectional, 5 steps."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    hidden, size = 4, 6

    def t(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [t("W", rng.integers(-127, 128, (2, size, 4 * hidden)).astype(np.int8)),
             t("R", rng.integers(-127, 128, (2, hidden, 4 * hidden)).astype(np.int8)),
             t("B", rng.normal(0, .2, (2, 8 * hidden)).astype(np.float32)),
             t("ws", np.array([0.011, 0.013], np.float32)), t("wz", np.zeros(2, np.int8)),
             t("rs", np.array([0.021, 0.017], np.float32)), t("rz", np.zeros(2, np.int8))]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "W", "R", "B", "", "", "", "", "ws", "wz", "rs", "rz"],
                            ["y"], domain="com.microsoft", hidden_size=hidden, direction="bidirectional")
    graph = helper.make_graph([node], "dq_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2, 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_dynamic_lstm_rounds_its_input_and_hidden_state_like_onnxruntime(tmp_path):
    """The kernel quantizes X once per call and h at every step of each direction: the unrolled cell
    that does the same reads like onnxruntime to float32 precision; without the rounding it does not."""
    import onnx
    import onnxruntime as ort

    from edgepack.converter.onnx.dequantize import dequantize

    if not ort_integer_gemm_is_exact():
        pytest.skip("onnxruntime's u8s8 GEMM saturates on this CPU (AVX2 without VNNI): its DynamicQuantizeLSTM is "
                    "not the integer arithmetic the emulation reproduces (both read ~12 dB against it here)")
    path = _dynamic_lstm_model(tmp_path / "lstm.onnx")
    xs = np.random.default_rng(5).normal(0, 1.5, (16, 5, 1, 6)).astype(np.float32)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.stack([original.run(None, {"x": x})[0] for x in xs])
    found = {}
    for emulate in (False, True):
        proto = onnx.load(str(path))
        assert dequantize(proto, emulate_rounding=emulate).lstms == 1
        assert "DynamicQuantizeLSTM" not in {n.op_type for n in proto.graph.node}
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        found[emulate] = sqnr_db(want, np.stack([sess.run(None, {"x": x})[0] for x in xs]))
    assert found[True] >= 100 and found[False] < 60, found


def test_a_budget_the_sources_rounding_bounds_names_it(dynamic_model, tmp_path):
    """int8-float-io removes the source's run-time rounding; a budget even every op float misses against
    the original is bounded by that rounding, and the advice says so (not QAT, not more calibration)."""
    from edgepack.errors import BudgetNotMet

    rng = np.random.default_rng(11)
    np.save(tmp_path / "cal.npy", rng.normal(0.5, 1.0, (48, 3, 10, 10)).astype(np.float32))
    with pytest.raises(BudgetNotMet) as info:
        api.convert(model=dynamic_model, output=tmp_path / "b", quantize="int8-float-io",
                    calibration=tmp_path / "cal.npy", min_sqnr=70)
    text = str(info.value)
    assert "the source's own run-time rounding bounds it: even every op float" in text, text
    assert "--quantize dynamic" in text and "--qat" not in text and "\n" not in text
    assert not (tmp_path / "b").exists()


def _if_reading_a_deep_outer_value():
    """cond two ops from the input, the value an If branch reads four ops away: ordering by explicit
    inputs alone puts the If before that value's producer (silero_vad_half's decoder If)."""
    from onnx import TensorProto, helper, numpy_helper

    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph([helper.make_node("Identity", ["r"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["o"])], "else", [], [out])
    nodes = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Neg", ["e"], ["n"]),
             helper.make_node("Relu", ["n"], ["u"]), helper.make_node("Abs", ["u"], ["r"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.float32(0), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_toposort_waits_for_the_outer_values_an_if_branch_reads():
    import onnx

    from edgepack.converter.onnx.dynamic_rounding import toposort

    model = _if_reading_a_deep_outer_value()
    toposort(model.graph)
    order = [n.op_type for n in model.graph.node]
    assert order.index("If") > order.index("Abs"), order
    onnx.checker.check_model(model)


def test_a_float_graph_without_dynamic_quantization_keeps_its_order():
    from edgepack.converter.onnx.dequantize import dequantize

    model = _if_reading_a_deep_outer_value()
    before = [n.name + n.op_type for n in model.graph.node]
    record = dequantize(model, emulate_rounding=True)
    assert [n.name + n.op_type for n in model.graph.node] == before and not record.changed
