"""The ONNX graph made ready for onnx2tf: static shapes, :mod:`.dequantize` (already-quantized models),
:mod:`.prepare` (frozen inputs, If inlining, names), onnx-simplifier, :mod:`.lstm` for streaming
models, slices tidied; and the checks that name what onnx2tf cannot take."""

from __future__ import annotations

import importlib.util
import logging

from edgepack._native import capture_native_output
from edgepack.converter.onnx.functions import constants_as_tensors, expand_functions
from edgepack.converter.onnx.integers import widen_small_integers
from edgepack.converter.onnx.onnx2tf_run import ops_message
from edgepack.converter.onnx.prepare import walk_nodes
from edgepack.errors import ConversionError
from edgepack.formats.onnx import OnnxModel
from edgepack.request import QuantizeMode

log = logging.getLogger(__name__)


def name_nodes(proto) -> dict[str, str]:
    """Give unnamed nodes a stable name (``Conv_3``) so errors can point at them; name -> op type."""
    seen: dict[str, str] = {}
    for i, node in enumerate(walk_nodes(proto.graph)):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen[node.name] = node.op_type
    return seen


def unsupported_ops(proto) -> dict[str, list[str]]:
    """Op types onnx2tf has no translation for -> the nodes using them."""
    missing: dict[str, list[str]] = {}
    for node in walk_nodes(proto.graph):
        custom = node.domain not in ("", "ai.onnx")
        # an op type is the model's text: only an identifier can name one of onnx2tf's op modules (a dot
        # would make find_spec import a parent package and raise)
        if custom or not node.op_type.isidentifier() or importlib.util.find_spec(f"onnx2tf.ops.{node.op_type}") is None:
            key = f"{node.domain}.{node.op_type}" if custom else node.op_type
            missing.setdefault(key, []).append(node.name)
    return missing


# Ops that compute on integers: a model that has them was quantized by its exporter (onnxruntime's
# quantize_dynamic/quantize_static, QOperator format). onnx2tf cannot rebuild their float meaning.
_INTEGER_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "MatMulNBits", "QGemm", "QAttention", "QEmbedLayerNormalization")


def quantized_ops(proto) -> list[str]:
    """Op types that show the model is already quantized, in graph order: integer-arithmetic ops,
    QLinear* ops, or DequantizeLinear applied to a stored weight (QDQ format)."""
    weights = {t.name for t in proto.graph.initializer}
    found: list[str] = []
    for node in walk_nodes(proto.graph):
        op = node.op_type
        integer = op in _INTEGER_OPS or op.startswith("QLinear")
        qdq_weight = op == "DequantizeLinear" and node.input and node.input[0] in weights
        if (integer or qdq_weight) and op not in found:
            found.append(op)
    return found


def refuse_unhandled_quantization(proto) -> None:
    """Refuse, before anything else is asked of the user, a quantized model that :mod:`.dequantize`
    cannot turn back into float ops (QLinear* operators, integer ops outside onnxruntime's patterns)."""
    if not quantized_ops(proto):
        return
    import onnx

    from edgepack.converter.onnx.dequantize import dequantize

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    dequantize(copy)
    refuse_quantized(copy)


def refuse_quantized(proto) -> None:
    quantized = quantized_ops(proto)
    if quantized:
        raise ConversionError(f"this ONNX model is already quantized ({', '.join(quantized)})",
                              hint="export the float model; edgepack quantizes it itself (--quantize)")


def conversion_shapes(model: OnnxModel, batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """The static input shapes the graph is converted with; ``batch`` (a target's) replaces the batch
    size of inputs whose first axis is a batch of 1 (a first axis of 2 or more is part of the tensor:
    a [2, batch, 128] state, 8 frames of a sequence model)."""
    shapes = model.conversion_shapes()
    if batch is None:
        return shapes
    return {k: (batch, *v[1:]) if v and v[0] == 1 else v for k, v in shapes.items()}


def emulates_rounding(mode: QuantizeMode) -> bool:
    """Float outputs keep a dynamically quantized model's run-time activation rounding (they read like
    onnxruntime on the original); quantizing modes calibrate those activations instead."""
    return mode in (QuantizeMode.NONE, QuantizeMode.FLOAT16)


def prepare(model: OnnxModel, shapes: dict[str, tuple[int, ...]], *, lower_lstm: bool = False,
            emulate_rounding: bool = False):
    """A copy of the graph ready for onnx2tf: static input shapes, frozen inputs (--input-value),
    decidable Ifs inlined, names TensorFlow accepts, named nodes and onnx-simplifier applied
    (:mod:`.prepare`); with ``lower_lstm`` (streaming models) LSTMs become cell ops (:mod:`.lstm`);
    ``emulate_rounding``: see :func:`.dequantize.dequantize`.
    Returns (graph, node name -> op type, what preparation did)."""
    import onnx

    from edgepack.converter.onnx.prepare import inline_ifs, prepare_graph, tidy_slices

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for vi in proto.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = size
    from edgepack.converter.onnx.dequantize import dequantize

    dequantized = dequantize(proto, emulate_rounding=emulate_rounding)
    refuse_quantized(proto)  # what no rewrite took (QLinear* operators...)
    constants_as_tensors(proto)  # onnx-simplifier and onnx2tf read a Constant's `value` only
    record = prepare_graph(proto, model.fixed_values)
    record.dequantized = dequantized
    proto = _simplify(proto)
    for _ in range(8):  # folding decides more conditions (shape arithmetic), inlining exposes more to fold
        if not record.ifs_left:
            break
        inlined, record.ifs_left = inline_ifs(proto)
        if not inlined:
            break
        record.inlined_ifs += inlined
        proto = _simplify(proto)
    if lower_lstm:
        from edgepack.converter.onnx.lstm import lower_lstms

        record.lowered_lstms = lower_lstms(proto)
        if record.lowered_lstms:
            proto = _simplify(proto)
    record.tidied_slices = tidy_slices(proto)  # last: onnx-simplifier would merge the slices again
    constants_as_tensors(proto)
    record.widened_integer_ops = widen_small_integers(proto)
    record.nodes_after = len(proto.graph.node)
    names = name_nodes(proto)
    missing = unsupported_ops(proto)
    if missing:  # ops onnx2tf lacks that ONNX defines as functions (CastLike, Swish): their bodies
        record.expanded_functions = expand_functions(proto, set(missing))
        if record.expanded_functions:
            proto = _simplify(proto)
            names = name_nodes(proto)
            missing = unsupported_ops(proto)
    if missing:
        raise ConversionError(f"onnx2tf has no translation for: {ops_message(missing)}",
                              hint="replace these ops in the exported model, or export with another opset")
    return proto, names, record


def expanded_copy(proto):
    """A copy of a prepared graph with every ONNX function op expanded into its body, simplified and
    its nodes named: ``(graph, node name -> op type, ops expanded)``; None when it has none."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    count = expand_functions(copy)
    if not count:
        return None
    copy = _simplify(copy)
    return copy, name_nodes(copy), count


def _simplify(proto):
    """onnx-simplifier folds the shape arithmetic that dynamic exports leave behind."""
    try:
        import onnxsim

        with capture_native_output() as cap:
            simplified, ok = onnxsim.simplify(proto)
    except Exception as err:  # onnxsim raises RuntimeError/ValidationError for graphs it cannot handle
        log.warning("onnx-simplifier skipped (%s); converting the graph as exported",
                    (str(err).strip().splitlines() or [type(err).__name__])[0][:200])
        return proto
    if not ok:
        log.warning("onnx-simplifier's result failed its own check; converting the graph as exported")
        log.debug("onnxsim output: %s", cap.tail())
        return proto
    return simplified


