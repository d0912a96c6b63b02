"""Byte-copying int8 ops whose output grid is not their input's, made right with a requantize.

TFLite's (and TFLite Micro's) int8 kernels of REVERSE_V2, RESHAPE, TRANSPOSE, SQUEEZE, EXPAND_DIMS,
PACK and UNPACK copy bytes: the output is read with the output tensor's scale and zero point, so
they must equal the input's. TF 2.19's quantizer does not always make them equal: a REVERSE_V2
between a bidirectional LSTM's backward direction and the CONCATENATION of both directions gets the
concatenation's scale, not its input's, and every value of the backward half is then read wrong (a
bidirectional LSTM of 16 units read 13-23 dB against the float model because of it).

:func:`requantize_copies` gives such an op's output its input's grid (a new tensor) and adds a
QUANTIZE op from that tensor to the original output tensor: int8 -> int8 QUANTIZE is a requantize in
TFLite and in TFLite Micro, so the model stays integer-only and every consumer reads the grid it was
quantized for. :func:`scale_mismatches` names the ops that need it.
"""

from __future__ import annotations

import numpy as np

# int8 kernels that copy bytes: TFLite's kernels read the output with the input's scale and zero point
COPIES = frozenset({"REVERSE_V2", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PACK", "UNPACK"})
_INTEGER_TYPES = (9, 7)  # schema TensorType INT8, INT16


def _mismatches(model: bytes) -> dict[int, list[int]]:
    """The first subgraph's integer ops that copy bytes with an output whose grid (scale, zero point) is
    not their first input's (same integer type): op position -> those outputs' positions. Read from the
    flatbuffer in place (unpacking a model costs 0.1-0.5 s, and most quantizations have none)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.tflite_model import code_names_in_place

    m = schema.Model.GetRootAsModel(model, 0)
    copies = {c for c, name in enumerate(code_names_in_place(m)) if name in COPIES}
    found: dict[int, list[int]] = {}
    if not copies:
        return found
    sg = m.Subgraphs(0)

    def grid(i: int):
        t = sg.Tensors(i)
        q = t.Quantization()
        if q is None or q.ScaleLength() != 1 or q.ZeroPointLength() != 1:
            return None
        return t.Type(), float(q.Scale(0)), int(q.ZeroPoint(0))

    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        if op.OpcodeIndex() not in copies or not op.InputsLength() or op.Inputs(0) < 0:
            continue
        src = grid(op.Inputs(0))
        if src is None or src[0] not in _INTEGER_TYPES:
            continue
        outs = [j for j in range(op.OutputsLength()) if op.Outputs(j) >= 0 and (g := grid(op.Outputs(j))) is not None
                and g[0] == src[0] and g != src]
        if outs:
            found[k] = outs
    return found


def scale_mismatches(model: bytes) -> list[str]:
    """Node names (first output tensor's name) of the first subgraph's integer ops that copy bytes
    but whose output's scale or zero point is not their input's."""
    from ai_edge_litert import schema_py_generated as schema

    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    return [(sg.Tensors(sg.Operators(k).Outputs(0)).Name() or b"").decode() for k in _mismatches(model)]


def requantize_copies(model: bytes) -> tuple[bytes, list[str]]:
    """``model`` with every mismatched copy (:func:`scale_mismatches`) writing its input's grid into a
    new tensor, followed by a QUANTIZE (requantize) into the original output tensor; returns the
    model and the node names fixed (the model unchanged when there are none)."""
    from ai_edge_litert import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    found = _mismatches(model)
    if not found:
        return model, []
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = obj.subgraphs[0]
    quantize = opcode_index(obj, schema.BuiltinOperator.QUANTIZE)
    operators, fixed = [], []
    for pos, op in enumerate(sg.operators):
        operators.append(op)
        positions = found.get(pos, [])
        if not positions:
            continue
        fixed.append((sg.tensors[int(op.outputs[0])].name or b"").decode())
        src = sg.tensors[int(op.inputs[0])]
        outs = np.asarray(op.outputs, np.int32).copy()
        for k in positions:
            target = int(outs[k])
            outs[k] = copy_tensor(sg, sg.tensors[target], src.quantization.scale, src.quantization.zeroPoint)
            requant = schema.OperatorT()
            requant.opcodeIndex = quantize
            requant.inputs = np.asarray([outs[k]], np.int32)
            requant.outputs = np.asarray([target], np.int32)
            operators.append(requant)
        op.outputs = outs
    sg.operators = operators
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), fixed


def opcode_index(obj, builtin: int) -> int:
    """The index of ``builtin``'s operator code in ``obj`` (flatbuffer_utils' model tree), added when missing."""
    from ai_edge_litert import schema_py_generated as schema

    for i, code in enumerate(obj.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    obj.operatorCodes.append(code)
    return len(obj.operatorCodes) - 1


def copy_tensor(sg, like, scale, zero_point, suffix: bytes = b"/input_grid") -> int:
    """A new activation tensor shaped like ``like`` on the grid (``scale``, ``zero_point``), named like it plus
    ``suffix``; its index."""
    from ai_edge_litert import schema_py_generated as schema

    t = schema.TensorT()
    t.shape = None if like.shape is None else np.asarray(like.shape, np.int32).copy()
    t.shapeSignature = None if like.shapeSignature is None else np.asarray(like.shapeSignature, np.int32).copy()
    t.type = like.type
    t.name = (like.name or b"") + suffix
    q = schema.QuantizationParametersT()
    q.scale = np.asarray(scale, np.float32).copy()
    q.zeroPoint = np.asarray(zero_point, np.int64).copy()
    q.quantizedDimension = 0
    t.quantization = q
    t.buffer = 0  # the empty buffer: an activation
    sg.tensors.append(t)
    return len(sg.tensors) - 1
