"""Calibration in one pass: every activation's min/max observed with each tensor in its own buffer.

TensorFlow's calibrator (TF 2.19) logs each op's float inputs before *and after* the op ran, so when
the runtime lets an op write its result into an input's buffer (in place), that input is recorded
with the union of both ranges (a relu6 output recorded as the product ``x * relu6(x + 3)``'s
-2.25..247.7). edgepack used to calibrate with TensorFlow and then run the samples a second time to
repair such ranges (:func:`edgepack.converter.requantize.repair_ranges`): two passes.

Here the calibration *is* the observation: the float model runs once per sample on LiteRT (its
optimized kernels, XNNPACK included) with every tensor to calibrate made an output of the graph, so
that each has a buffer of its own and nothing is computed in place over it, in the crash-contained
child (:func:`edgepack.converter.isolate.observe`), and the min/max of exactly the
tensors TensorFlow's calibrator logs — float32 inputs and outputs of ops that hold no constant data
— are written into the model the way its ``Calibrate()`` writes them (a ``QuantizationParameters``
with one ``min`` and one ``max``). NaN values are skipped, as the calibrator skips them. The result
is what ``mlir_quantize`` takes.

Graphs this pass cannot reproduce keep TensorFlow's calibrator (and the range check after it):
several subgraphs (WHILE/IF bodies, which the logging interpreter calibrates too), LSTM/RNN kernels
(the calibrator logs their internal gate tensors, which no interpreter exposes) and custom ops.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# builtin ops whose calibration logs internal tensors (the calibrator's LSTM logging kernel) or that
# carry variable state: only TensorFlow's calibrator sees what they need
_NEEDS_TF_CALIBRATOR = {"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                        "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "RNN", "SVDF",
                        "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
_FLOAT32 = 0  # schema TensorType.FLOAT32


def calibration_tensors(model: bytes) -> list[int] | None:
    """The tensors TensorFlow's calibrator would log (float32, not constant, an op's input or output),
    by index; None when the graph needs TensorFlow's own calibrator (see the module's docstring)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.tflite_model import op_kinds

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    if len(obj.subgraphs or []) != 1:
        return None
    kinds = op_kinds(obj)
    if any(k in _NEEDS_TF_CALIBRATOR or k.startswith("CUSTOM:") for k in kinds):
        return None
    sg, buffers = obj.subgraphs[0], obj.buffers or []
    found: set[int] = set()
    for op in sg.operators or []:
        for group in (op.inputs, op.outputs):
            found.update(int(i) for i in (group if group is not None else ()) if i >= 0)
    return sorted(i for i in found if sg.tensors[i].type == _FLOAT32 and not _constant(sg.tensors[i], buffers))


def _constant(tensor, buffers) -> bool:
    if not tensor.buffer or tensor.buffer >= len(buffers):
        return False
    buf = buffers[tensor.buffer]
    return buf.data is not None and len(buf.data) > 0 or bool(getattr(buf, "size", 0))


# ops whose output's min/max follow exactly from their inputs': values moved (the reshape family), joined
# (a concatenation: the union), or mapped by a monotonic function whose int8 output grid is fixed anyway
# (sigmoid 1/256, tanh 1/128: the recorded range is not used by the quantizer)
_SAME_VALUES = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS"}
_MONOTONIC = {"LOGISTIC": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)), "TANH": np.tanh}  # sigmoid; no exp overflow


def derived_tensors(model: bytes, tensors: list[int]) -> dict[int, tuple[str, list[int]]]:
    """Of ``tensors``, those whose range follows from others of them: ``{tensor: (op type, source
    tensors)}`` in execution order. They need not be observed (on ddddocr's detector 80 of 296 tensors,
    a quarter of the values the one pass reads: its sigmoids, concatenations and transposes)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.tflite_model import op_kinds

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    wanted = set(int(t) for t in tensors)
    found: dict[int, tuple[str, list[int]]] = {}
    for kind, op in zip(op_kinds(obj), obj.subgraphs[0].operators or []):
        outs = [int(o) for o in (op.outputs if op.outputs is not None else ())]
        ins = [int(i) for i in (op.inputs if op.inputs is not None else ())]
        if len(outs) != 1 or outs[0] not in wanted or not ins:
            continue
        src = ins if kind == "CONCATENATION" else ins[:1] if kind in _SAME_VALUES or kind in _MONOTONIC else []
        if src and all(i in wanted for i in src) and outs[0] not in src:
            found[outs[0]] = (kind, src)
    return found


def with_derived(ranges: Mapping[int, tuple[float, float]], derived: Mapping[int, tuple[str, list[int]]]
                 ) -> dict[int, tuple[float, float]]:
    """``ranges`` (observed) with the ranges of :func:`derived_tensors` filled in from their sources."""
    out = dict(ranges)
    for t, (kind, src) in derived.items():
        if not all(i in out for i in src):
            continue  # a source that never held a value: no range, as the calibrator gives none
        lo, hi = min(out[i][0] for i in src), max(out[i][1] for i in src)
        if kind in _MONOTONIC:
            f = _MONOTONIC[kind]
            lo, hi = float(f(np.float32(lo))), float(f(np.float32(hi)))
        out[t] = (lo, hi)
    return out


def with_calibration(model: bytes, ranges: Mapping[int, tuple[float, float]]) -> bytes:
    """``model`` with each tensor of ``ranges`` (index -> (min, max)) given a calibration record: a
    QuantizationParameters holding that min and max only, as TensorFlow's ``Calibrate()`` writes it."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    tensors = obj.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        q = schema.QuantizationParametersT()
        q.min, q.max = [float(lo)], [float(hi)]
        tensors[int(i)].quantization = q
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def with_outputs(model: bytes, tensors: list[int]) -> bytes:
    """``model`` with ``tensors`` (graph inputs aside) added to its outputs: each keeps a buffer of its own
    and is written out whichever kernels (XNNPACK's fused ones too) compute it. Written in place
    (:func:`edgepack.tflite_model.with_graph_outputs`)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.tflite_model import with_graph_outputs

    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    inputs = {int(sg.Inputs(j)) for j in range(sg.InputsLength())}
    outs = [int(sg.Outputs(j)) for j in range(sg.OutputsLength())]
    wanted = list(dict.fromkeys([*outs, *(int(t) for t in tensors if int(t) not in inputs)]))
    return with_graph_outputs(model, wanted)
