"""Fused activations written out again as ops that have int16 kernels, for int16x8.

edgepack fuses a source's decomposed hard-swish (``x * clip(x + 3, 0, 6) / 6``) into TFLite's
HARD_SWISH before converting: that op has int8 kernels everywhere, so full int8 needs no float op and
one rounding instead of four. TFLite has no int16 HARD_SWISH kernel, though: TF 2.19's quantizer
refuses int16x8 on such a model ("Quantization to 16x8-bit not yet supported for op: 'HARD_SWISH'"),
or, when float ops are allowed, leaves every hard-swish float (layout_cdla: 170 of 518 ops).

At int16's resolution the four roundings cost nothing measurable, so for int16x8 each HARD_SWISH of
the float model is written as three ops with int16 kernels, in its place:

    a = ADD(x, 3)  fused RELU6      (clip(x + 3, 0, 6))
    b = MUL(x, a)
    y = MUL(b, 1/6)                 (y keeps the HARD_SWISH's output tensor: its name, its readers)

Exact in float arithmetic up to float32 rounding (checked in the tests against the fused op).
"""

from __future__ import annotations

import numpy as np

from edgepack.converter.copy_scales import opcode_index

_NO_INT16 = ("HARD_SWISH", "RELU_0_TO_1")  # fused ops without an int16 kernel that are written out here


def has_no_int16(model: bytes) -> bool:
    from edgepack.tflite_model import read_tflite

    return any(k in read_tflite(model, verify=False).op_counts for k in _NO_INT16)


def unfuse_for_int16(model: bytes) -> tuple[bytes, dict[str, int]]:
    """``model`` (float, calibrated or not) with every HARD_SWISH written as ADD(+3, RELU6) / MUL / MUL
    and every RELU_0_TO_1 as RELU / MINIMUM(1), and how many of each; the same bytes when it has none."""
    if not has_no_int16(model):
        return model, {}
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    rewrite = {_find_code(obj, schema.BuiltinOperator.HARD_SWISH): ("HARD_SWISH", _hard_swish_ops),
               _find_code(obj, schema.BuiltinOperator.RELU_0_TO_1): ("RELU_0_TO_1", _relu_0_to_1_ops)}
    rewrite.pop(None, None)
    counts: dict[str, int] = {}
    for sg in obj.subgraphs:
        ops = []
        for op in sg.operators or []:
            if op.opcodeIndex in rewrite and len(op.inputs) == 1 and len(op.outputs) == 1:
                kind, write = rewrite[op.opcodeIndex]
                ops.extend(write(obj, sg, op, schema))
                counts[kind] = counts.get(kind, 0) + 1
            else:
                ops.append(op)
        sg.operators = ops
    _drop_unused_codes(obj)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), counts


def _drop_unused_codes(obj) -> None:
    """Operator codes no op uses any more, dropped (TF's calibrator resolves only the ops a model runs,
    then refuses a model that lists another)."""
    used = sorted({int(op.opcodeIndex) for sg in obj.subgraphs for op in sg.operators or []})
    new = {old: i for i, old in enumerate(used)}
    obj.operatorCodes = [obj.operatorCodes[i] for i in used]
    for sg in obj.subgraphs:
        for op in sg.operators or []:
            op.opcodeIndex = new[int(op.opcodeIndex)]


def _find_code(obj, code: int) -> int | None:
    for i, oc in enumerate(obj.operatorCodes or []):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    return None


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else (t.name or "op")


def _hard_swish_ops(obj, sg, op, schema) -> list:
    x, y = int(op.inputs[0]), int(op.outputs[0])
    yt = sg.tensors[y]
    name = _name(yt)
    y_range = _range(yt)
    a = _tensor(sg, yt, f"{name}/hard_swish_relu6", (0.0, 6.0) if y_range else None)
    b = _tensor(sg, yt, f"{name}/hard_swish_x_relu6", (6 * y_range[0], 6 * y_range[1]) if y_range else None)
    three = _const(obj, sg, f"{name}/hard_swish_3", 3.0)
    sixth = _const(obj, sg, f"{name}/hard_swish_1_6", 1.0 / 6.0)

    add_opts = schema.AddOptionsT()
    add_opts.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    add_opts.potScaleInt16 = False  # the general int16 rescaling: the quantizer's scales are not powers of two
    mul_opts = schema.MulOptionsT()
    mul_opts.fusedActivationFunction = schema.ActivationFunctionType.NONE
    add, mul = opcode_index(obj, schema.BuiltinOperator.ADD), opcode_index(obj, schema.BuiltinOperator.MUL)
    return [_op(schema, add, [x, three], a, schema.BuiltinOptions.AddOptions, add_opts),
            _op(schema, mul, [x, a], b, schema.BuiltinOptions.MulOptions, mul_opts),
            _op(schema, mul, [b, sixth], y, schema.BuiltinOptions.MulOptions, mul_opts)]


def _relu_0_to_1_ops(obj, sg, op, schema) -> list:
    """RELU_0_TO_1(x) = MINIMUM(RELU(x), 1)."""
    x, y = int(op.inputs[0]), int(op.outputs[0])
    yt = sg.tensors[y]
    name = _name(yt)
    y_range = _range(yt)
    r = _tensor(sg, yt, f"{name}/relu", y_range)
    one = _const(obj, sg, f"{name}/one", 1.0)
    return [_op(schema, opcode_index(obj, schema.BuiltinOperator.RELU), [x], r, 0, None),
            _op(schema, opcode_index(obj, schema.BuiltinOperator.MINIMUM), [r, one], y, 0, None)]


def _op(schema, code: int, ins: list[int], out: int, kind: int, options):
    op = schema.OperatorT()
    op.opcodeIndex = code
    op.inputs, op.outputs = np.asarray(ins, np.int32), np.asarray([out], np.int32)
    op.builtinOptionsType, op.builtinOptions = kind, options
    return op


def _range(t) -> tuple[float, float] | None:
    q = t.quantization
    if q is None or q.min is None or q.max is None or len(q.min) != 1:
        return None
    return float(q.min[0]), float(q.max[0])


def _tensor(sg, like, name: str, rng: tuple[float, float] | None) -> int:
    """A float activation shaped like ``like``, with a recorded range when the model is calibrated."""
    from tensorflow.lite.python import schema_py_generated as schema

    t = schema.TensorT()
    t.shape = None if like.shape is None else np.array(like.shape, np.int32)
    t.shapeSignature = None if like.shapeSignature is None else np.array(like.shapeSignature, np.int32)
    t.type, t.buffer, t.name = schema.TensorType.FLOAT32, 0, name.encode()
    if rng is not None:
        q = schema.QuantizationParametersT()
        q.min, q.max = [float(min(rng[0], 0.0))], [float(max(rng[1], 0.0))]
        t.quantization = q
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _const(obj, sg, name: str, value: float) -> int:
    """A float32 scalar constant of its own (the quantizer gives each constant its own scale)."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = schema.BufferT()
    buf.data = np.frombuffer(np.float32(value).tobytes(), np.uint8).copy()
    obj.buffers.append(buf)
    t = schema.TensorT()
    t.shape = np.array([], np.int32)
    t.type, t.buffer, t.name = schema.TensorType.FLOAT32, len(obj.buffers) - 1, name.encode()
    sg.tensors.append(t)
    return len(sg.tensors) - 1
