"""The ops of an unrolled recurrent cell (LSTM, GRU) in a calibrated TFLite model, found by structure.

onnx2tf writes an ONNX ``LSTM`` as a Keras cell unrolled over the time steps (TF's int8 calibration
crashes in the WHILE loop of the fused form): per step, FULLY_CONNECTED projections of the input and
of the previous output, their ADD, a SPLIT into the gates, bias ADDs, LOGISTIC/TANH, and the cell
state's MUL/ADD. In int8 every one of those is rounded to a per-tensor grid once per step, and the
cell state carries the error through the sequence; onnxruntime's static quantization keeps an LSTM's
gates and cell float. :func:`cell_nodes` names the ops between the projections and the next
projection so that the quantizer can keep them float while the projections (and the rest of the
model) stay int8.

A cell is a connected group of elementwise ops (ADD, SUB, MUL, LOGISTIC, TANH, SPLIT) that holds a
MUL of a LOGISTIC's output by a TANH's output (an input or output gate times a candidate or the
squashed cell). A SiLU (``x * sigmoid(x)``) or a gated convolution has no TANH in its group.
"""

from __future__ import annotations

from collections.abc import Sequence

CELL_OPS = frozenset({"ADD", "SUB", "MUL", "LOGISTIC", "TANH", "SPLIT", "SPLIT_V"})
# ops that only move values: between a state input and a cell, or a cell and a state output
MOVES = frozenset({"GATHER", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "SLICE", "STRIDED_SLICE",
                   "SPLIT", "SPLIT_V", "PACK", "UNPACK", "TRANSPOSE"})


def cell_nodes(ops: Sequence[tuple[str, str, list[int], list[int]]], *, projections: bool = True) -> list[str]:
    """The node names (first output tensor's name) of every recurrent-cell op in ``ops``
    (:func:`edgepack.converter.requantize.model_ops`), in execution order; with ``projections`` the
    FULLY_CONNECTED ops that feed a cell (the gates' input and recurrent matmuls: onnxruntime runs them
    in float inside its LSTM op too, on its int8-rounded input)."""
    producer = {t: i for i, (_, _, _, outs) in enumerate(ops) for t in outs}
    parent = list(range(len(ops)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (kind, _, ins, _) in enumerate(ops):
        if kind not in CELL_OPS:
            continue
        for t in ins:
            j = producer.get(t)
            if j is not None and ops[j][0] in CELL_OPS:
                parent[find(i)] = find(j)
    cells = {find(i) for i, (kind, _, ins, _) in enumerate(ops) if kind == "MUL" and _gate_product(ops, producer, ins)}
    inside = {i for i, (kind, _, _, _) in enumerate(ops) if kind in CELL_OPS and find(i) in cells}
    if projections:
        inside |= {producer[t] for i in inside for t in ops[i][2]
                   if t in producer and ops[producer[t]][0] == "FULLY_CONNECTED"}
    return [node for i, (_, node, _, _) in enumerate(ops) if i in inside]


def _gate_product(ops, producer: dict[int, int], ins: list[int]) -> bool:
    kinds = {ops[producer[t]][0] for t in ins if t in producer}
    return {"LOGISTIC", "TANH"} <= kinds


def hybrid_projections(model: bytes, nodes: Sequence[str]) -> tuple[bytes, int]:
    """``model`` with the float FULLY_CONNECTED ops among ``nodes`` made hybrid: int8 weights (per output
    channel, symmetric, as the converter writes them) and float activations that the kernel quantizes per
    row as it runs (``asymmetric_quantize_inputs``). The cell's projections then cost their int8 bytes and
    not four times that; returns the model and how many weight tensors were quantized."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = obj.subgraphs[0]
    fc = {i for i, c in enumerate(obj.operatorCodes)
          if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.FULLY_CONNECTED}
    wanted = set(nodes)
    name = lambda op: (sg.tensors[op.outputs[0]].name or b"").decode()  # noqa: E731
    readers: dict[int, list] = {}
    for op in sg.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(op)
    done: set[int] = set()
    for op in sg.operators:
        if op.opcodeIndex not in fc or name(op) not in wanted or len(op.inputs) < 2:
            continue
        w = sg.tensors[op.inputs[1]]
        data = obj.buffers[w.buffer].data
        if (sg.tensors[op.inputs[0]].type != schema.TensorType.FLOAT32 or w.type != schema.TensorType.FLOAT32
                or data is None or not len(data) or len(w.shape) != 2
                or any(r.opcodeIndex not in fc or name(r) not in wanted for r in readers[int(op.inputs[1])])):
            continue
        for r in readers[int(op.inputs[1])]:
            if r.builtinOptions is not None:
                r.builtinOptions.asymmetricQuantizeInputs = True
        if int(op.inputs[1]) in done:
            continue
        weights = np.frombuffer(bytes(bytearray(data)), np.float32).reshape(w.shape)
        scale = (np.maximum(np.abs(weights).max(axis=1), 1e-12) / 127.0).astype(np.float32)
        obj.buffers[w.buffer].data = np.frombuffer(
            np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8).tobytes(), np.uint8)
        w.type = schema.TensorType.INT8
        w.quantization = schema.QuantizationParametersT()
        w.quantization.scale, w.quantization.zeroPoint = scale, np.zeros(len(scale), np.int64)
        w.quantization.quantizedDimension = 0
        done.add(int(op.inputs[1]))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), len(done)


def state_path_nodes(ops: Sequence[tuple[str, str, list[int], list[int]]], inputs: Sequence[int],
                     outputs: Sequence[int], cell: Sequence[str]) -> list[str]:
    """The node names of the ops that only move values (:data:`MOVES`) from the graph's inputs to the
    ``cell`` ops and from the cell ops to the graph's outputs: a streaming model's state ``[h; c]``
    sliced into the cell and concatenated out of it. With float I/O (``int8-float-io``) these stay
    float too, so the state is never put on one int8 grid (silero VAD's ``h`` in (-1, 1) and ``c`` in
    about (-136, 136) shared a step of 1.07): onnxruntime feeds its LSTM op the float state it is given."""
    cells = set(cell)
    producer = {t: i for i, (_, _, _, outs) in enumerate(ops) for t in outs}
    readers: dict[int, list[int]] = {}
    for j, (_, _, op_in, _) in enumerate(ops):
        for t in op_in:
            readers.setdefault(t, []).append(j)

    def moves_from(start: set[int]) -> list[int]:
        """Moves whose activation inputs all come from ``start`` or from earlier such moves."""
        have, found = set(start), []
        for i, (kind, _, op_in, op_out) in enumerate(ops):
            acts = [t for t in op_in if t in producer or t in start]
            if kind in MOVES and acts and all(t in have for t in acts):
                found.append(i)
                have.update(op_out)
        return found

    def leading(found: list[int], goal) -> set[int]:
        """Those of ``found`` from which ``goal`` is reached through others of them."""
        kept: set[int] = set()
        for i in reversed(found):
            nxt = {j for t in ops[i][3] for j in readers.get(t, [])}
            if goal(i, nxt) or nxt & kept:
                kept.add(i)
        return kept

    reaches = leading(moves_from(set(inputs)), lambda i, nxt: any(ops[j][1] in cells for j in nxt))
    made = {t for _, node, _, op_out in ops if node in cells for t in op_out}
    outs_ = set(outputs)
    useful = leading(moves_from(made), lambda i, nxt: bool(set(ops[i][3]) & outs_))
    return [ops[i][1] for i in sorted(reaches | useful)]
