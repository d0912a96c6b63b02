"""A float op's output that a CONCATENATION and other int8 ops both read: the others get their own grid.

When the quantizer leaves an op float (a recurrent cell under ``lstm-float``, an op an accuracy budget
keeps float), it adds one QUANTIZE after it, on the grid of whatever reads the result. A CONCATENATION
gives its inputs its own output's grid, so a cell's output ``h`` that is both concatenated into the
state ``[h; c]`` and read by the next layer reaches that layer on the state's grid: silero VAD's
``h`` lies in (-1, 1) and its cell state ``c`` in about (-136, 136), so ``h`` came to the decoder in
steps of 1.07 — three values. onnxruntime's static quantization reads ``h`` float there (its LSTM op's
output goes to the next op unrounded).

:func:`own_grids` adds a second QUANTIZE from the same float tensor, on that tensor's own recorded range,
repeats the byte-copying ops between it and the readers (RESHAPE, SQUEEZE, ... which must keep their
input's grid; a requantize to the shared grid on the way is left out), and points the readers whose int8
kernels requantize whatever grid they are given (activations, elementwise arithmetic, DEQUANTIZE) at it.
The CONCATENATION keeps the shared grid. Readers whose kernel ties a constant to the input grid (a
convolution's int32 bias is quantized with the input's scale) keep the shared grid too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgepack.converter.copy_scales import COPIES, copy_tensor, opcode_index

# int8 kernels that read any input grid (they requantize in Prepare from the tensors' scales)
REQUANTIZING = frozenset({"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "ADD", "SUB", "MUL",
                          "LOGISTIC", "TANH", "HARD_SWISH", "DEQUANTIZE", "QUANTIZE"})
FINER = 0.5  # the own grid is used when its step is at most this share of the shared one
SUFFIX = b"/own_grid"


def int8_grid(lo: float, hi: float) -> tuple[float, int]:
    """TFLite's asymmetric int8 grid (scale, zero point) for the range [lo, hi] (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(np.round(-128.0 - lo / scale), -128, 127))


def count(model: bytes) -> int:
    """How many tensors of ``model`` :func:`own_grids` added."""
    from ai_edge_litert import schema_py_generated as schema

    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    return sum(1 for i in range(sg.TensorsLength()) if (sg.Tensors(i).Name() or b"").endswith(SUFFIX))


def own_grids(model: bytes, ranges: Mapping[str, tuple[float, float]]) -> tuple[bytes, int]:
    """``model`` with the readers described in the module docstring on their own grid; ``ranges``: float
    tensor name -> recorded (min, max). Returns the model (unchanged when nothing applies) and how many
    readers moved."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgepack.tflite_model import op_kinds

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = obj.subgraphs[0]
    kinds = dict(zip(map(id, sg.operators), op_kinds(obj)))
    kind = lambda op: kinds[id(op)]  # noqa: E731
    readers: dict[int, list] = {}
    for op in sg.operators:
        for t in op.inputs:
            readers.setdefault(int(t), []).append(op)
    after: dict[int, list] = {}  # id(op) -> new ops to run right after it
    moved = 0
    for q in list(sg.operators):
        if kind(q) != "QUANTIZE" or sg.tensors[int(q.inputs[0])].type != 0:  # float32 -> int8 only
            continue
        source = sg.tensors[int(q.inputs[0])]
        found = ranges.get((source.name or b"").decode())
        if found is None:
            continue
        scale, zero = int8_grid(*found)
        chain, own = [q], None  # the ops from q to the tensor, and that tensor's own-grid copy
        tensor = int(q.outputs[0])
        while True:
            shared = sg.tensors[tensor].quantization
            outs = readers.get(tensor, [])
            movable = [r for r in outs if kind(r) in REQUANTIZING]
            if (movable and any(kind(r) == "CONCATENATION" for r in outs) and shared is not None
                    and len(shared.scale) == 1 and scale <= FINER * float(shared.scale[0])):
                if own is None:
                    own = _repeat(obj, sg, chain, scale, zero, after)
                for r in movable:
                    r.inputs = np.asarray([own if int(t) == tensor else int(t) for t in r.inputs], np.int32)
                moved += len(movable)
            # on through a byte copy, or a requantize (the quantizer's own QUANTIZE to the shared grid)
            nxt = [r for r in outs if len(r.outputs) == 1 and (kind(r) in COPIES or kind(r) == "QUANTIZE")]
            if len(nxt) != 1 or own is not None:
                break
            chain.append(nxt[0])
            tensor = int(nxt[0].outputs[0])
    if not moved:
        return model, 0
    sg.operators = [x for op in sg.operators for x in (op, *after.get(id(op), []))]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), moved


def _repeat(obj, sg, chain: list, scale: float, zero: int, after: dict) -> int:
    """``chain`` (a QUANTIZE from float, then byte copies and requantizes) repeated on the grid (scale, zero),
    the requantizes left out; each new op runs right after the one it repeats. Returns the last new tensor."""
    from ai_edge_litert import schema_py_generated as schema

    quantize = opcode_index(obj, schema.BuiltinOperator.QUANTIZE)
    src = int(chain[0].inputs[0])
    for op in chain[:1] + [op for op in chain[1:] if op.opcodeIndex != quantize]:  # requantizes: not repeated
        new = schema.OperatorT()
        new.opcodeIndex = quantize if op is chain[0] else op.opcodeIndex
        new.builtinOptionsType, new.builtinOptions = op.builtinOptionsType, op.builtinOptions
        new.inputs = np.asarray([src, *[int(i) for i in op.inputs[1:]]], np.int32)
        src = copy_tensor(sg, sg.tensors[int(op.outputs[0])], [scale], [zero], SUFFIX)
        new.outputs = np.asarray([src], np.int32)
        after.setdefault(id(op), []).append(new)
    return src

