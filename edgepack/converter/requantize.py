"""Calibrate once, quantize many times.

TensorFlow's converter can stop after calibration (the float model with every activation's
recorded min/max) and quantize that model later with ``mlir_quantize``; edgepack keeps the
calibrated model of an int8 conversion (calibrated in a child process, :mod:`.isolate`) and
quantizes it again with

- other activation ranges: the recorded min/max of chosen tensors replaced before quantizing;
- ops kept in float (``denylisted_nodes``: an op is named by its first output tensor);
- float outputs instead of int8 ones (an output whose parts need different scales);
- int16 activations (int16x8) instead of int8.

A denylisted op is float only if its output stays float: TF 2.19's quantizer still puts a
quantize/dequantize pair ("fake quant") after ops with a fixed output range (LOGISTIC's 1/256
grid, SOFTMAX...) and after some concatenation inputs even when every consumer is float, which
rounds the float path to int8 (a YOLOX head kept entirely float read 35 dB instead of 117 dB
against the source). :func:`strip_fake_quant` removes such pairs whose result is float again.

Each call is a fraction of a second to a few seconds: no graph export, no calibration.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.converter.copy_scales import requantize_copies
from edgepack.errors import ConversionError
from edgepack.tflite_model import op_kinds

# the last few quantizations, by calibrated bytes and quantizer arguments: ``ranges`` quantizes its pick
# as a trial and the bundle's model is the same quantization (on ddddocr's recognizer 3.6 s each)
# six: the recorded ranges, ranges' three rules and its two scales (optimize/ptq/ranges.py), whichever is kept
_QUANTIZED: OrderedDict[tuple, bytes] = OrderedDict()
_QUANTIZED_KEPT = 6


@dataclass(frozen=True)
class CalibratedTensor:
    index: int
    name: str
    min: float
    max: float
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Calibrated:
    """A calibrated float model and the quantizer arguments of the conversion that made it."""

    model: bytes
    input_type: Any  # tf.DType of the quantized model's inputs (int8, or float32 for int8-float-io)
    output_type: Any
    disable_per_channel: bool = False
    disable_per_channel_dense: bool = False
    enable_variable_quantization: bool = False
    debug_options: bytes = b""
    # the calibration samples again (arrays in input-tensor order), for int16x8's own calibration
    samples: Any = field(default=None, compare=False, repr=False)
    # ranges the calibrator recorded too wide, replaced by the values seen: {index: (recorded, observed)}
    repaired: dict = field(default_factory=dict, compare=False, repr=False)
    # how the ranges were recorded ("one pass", or "tensorflow" + the range check), in how many seconds
    calibration: dict = field(default_factory=dict, compare=False, repr=False)
    # node names every quantization keeps float (the lstm-float stage: recurrent cells), budget candidates too
    keep_float: tuple[str, ...] = ()
    # an already-quantized source's weight grids (weight_grids.SourceGrids): every quantization keeps them
    weight_grids: Any = field(default=None, compare=False, repr=False)
    _tensors: list = field(default_factory=list, compare=False, repr=False)
    _ops: list = field(default_factory=list, compare=False, repr=False)

    # -- what calibration recorded ---------------------------------------------------------------------
    def tensors(self) -> list[CalibratedTensor]:
        """Every tensor with a recorded range (the activations), graph order."""
        if not self._tensors:
            model = _unpack(self.model)
            sg = model.subgraphs[0]
            for i, t in enumerate(sg.tensors or []):
                q = t.quantization
                if q is None or q.min is None or q.max is None or len(q.min) != 1:
                    continue
                self._tensors.append(CalibratedTensor(i, (t.name or b"").decode(), float(q.min[0]), float(q.max[0]),
                                                      tuple(int(d) for d in (t.shape if t.shape is not None else ()))))
        return list(self._tensors)

    def ops(self) -> list[tuple[str, str, list[int], list[int]]]:
        """``(op type, node name, input tensor indices, output tensor indices)`` in execution order;
        the node name (the first output tensor's name) is what ``denylist`` takes."""
        if not self._ops:
            self._ops.extend(model_ops(self.model))
        return list(self._ops)

    def for_int16(self) -> Calibrated:
        """This calibrated model as int16x8 quantizes it (:meth:`quantize` with ``int16``): each HARD_SWISH
        and RELU_0_TO_1 written as ops with int16 kernels (:mod:`~edgepack.converter.unfuse`), so that its
        ops and node names are the int16x8 model's (what a splice over that quantization aligns with)."""
        from edgepack.converter.unfuse import unfuse_for_int16

        model, count = unfuse_for_int16(self.model)
        return self.with_model(model) if count else self

    def with_model(self, model: bytes, *, same_graph: bool = False) -> Calibrated:
        """The same calibration settings over another calibrated flatbuffer (its tensors read afresh);
        ``same_graph``: ``model`` has this one's ops and tensors, only recorded ranges or constants
        edited, so the op list is not read again (a trial of ``ranges`` re-read it each time)."""
        import dataclasses

        return dataclasses.replace(self, model=model, _tensors=[], _ops=list(self._ops) if same_graph else [])

    # -- quantizing ---------------------------------------------------------------------------------
    def quantize(self, *, denylist: Iterable[str] = (), ranges: Mapping[str, tuple[float, float]] | None = None,
                 float_output: bool = False, int16: bool = False, allow_float: bool = False) -> bytes:
        """The quantized model: ``denylist`` node names stay float, ``ranges`` (tensor name -> (min,
        max)) replace the recorded ranges, ``float_output`` gives float32 outputs (inputs keep their
        type), ``int16`` int16 activations with float I/O (int16x8; ``allow_float``: float ops where
        int16 has no kernel; its own calibration pass, so ``ranges`` do not apply)."""
        import tensorflow as tf
        from tensorflow.compiler.mlir.lite import types_pb2 as _types
        from tensorflow.lite.python.convert import mlir_quantize

        if int16:
            return self._on_source_grids(requantize_copies(self._int16x8(self.model, allow_float=allow_float))[0])
        data = self.model if not ranges else with_ranges(self.model, ranges)
        in_t = tf.float32 if self.input_type == tf.float32 else tf.int8
        out_t = tf.float32 if float_output or self.output_type == tf.float32 else tf.int8
        deny = sorted(set(denylist) | set(self.keep_float))
        key = (hashlib.sha256(data).digest(), in_t.name, out_t.name, tuple(deny), self.disable_per_channel,
               self.disable_per_channel_dense, self.enable_variable_quantization, self.debug_options)
        if key in _QUANTIZED:  # the same calibrated bytes quantized the same way (a ranges trial, then the bundle)
            _QUANTIZED.move_to_end(key)
            return self._on_source_grids(_QUANTIZED[key])
        # an op with several outputs (SPLIT, UNPACK: an LSTM's gates) is not matched by its node name:
        # it is kept float by its type, so every op of that type is
        multi = {node: kind for kind, node, _, outs in self.ops() if len(outs) > 1}
        types = sorted({multi[n] for n in deny if n in multi})
        with capture_native_output() as cap:
            try:
                out = bytes(mlir_quantize(
                    data, self.disable_per_channel, input_data_type=in_t, output_data_type=out_t,
                    inference_type=_types.QUANTIZED_INT8,
                    denylisted_ops=types or None, denylisted_nodes=deny or None,
                    enable_variable_quantization=self.enable_variable_quantization,
                    disable_per_channel_for_dense_layers=self.disable_per_channel_dense,
                    debug_options_str=self.debug_options))
            except Exception as err:  # the quantizer raises ConverterError / RuntimeError
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise ConversionError(f"re-quantizing the calibrated model failed: {first}",
                                      hint="run with -v for the converter log") from err
        del cap
        out = requantize_copies(strip_fake_quant(out) if deny else out)[0]
        if deny:  # a float op's output read by a concatenation and by others: the others on its own grid
            from edgepack.converter.own_grids import own_grids

            out = own_grids(out, {**{t.name: (t.min, t.max) for t in self.tensors()}, **(ranges or {})})[0]
        _QUANTIZED[key] = out
        while len(_QUANTIZED) > _QUANTIZED_KEPT:
            _QUANTIZED.popitem(last=False)
        return self._on_source_grids(out)

    def _on_source_grids(self, model: bytes) -> bytes:
        return self.weight_grids.apply(model)[0] if self.weight_grids else model

    def _int16x8(self, data: bytes, *, allow_float: bool) -> bytes:
        """int16 activations, float32 I/O. TF 2.19's MLIR quantizer fails on int16 (mixed element
        types on binary ops with constants), so this is the old quantizer, as the converter does it
        for int16x8: one more calibration pass, in the child process."""
        from edgepack.converter import isolate
        from edgepack.converter.unfuse import unfuse_for_int16

        if self.samples is None:
            raise ConversionError("int16x8 needs the calibration samples again; none were kept")
        data = unfuse_for_int16(data)[0]  # no int16 HARD_SWISH / RELU_0_TO_1 kernels (no-op when done already)
        q = {"input": int(np.dtype(np.float32).num), "output": int(np.dtype(np.float32).num),
             "allow_float": allow_float, "activations": int(np.dtype(np.int16).num),
             "bias": int(np.dtype(np.int64).num), "disable_per_channel": self.disable_per_channel,
             "disable_per_channel_dense": self.disable_per_channel_dense}
        return isolate.calibrate(data, self.samples(), quantize=q, stage="int16x8 calibration")


def model_ops(model: bytes) -> list[tuple[str, str, list[int], list[int]]]:
    """A ``.tflite``'s ops: ``(op type, node name, input tensor indices, output tensor indices)`` in
    execution order; the node name is the first output tensor's name."""
    from edgepack.tflite_model import read_tflite

    return ops_of(read_tflite(model, verify=False))  # a model converted in this process


def ops_of(info) -> list[tuple[str, str, list[int], list[int]]]:
    """:func:`model_ops` of a model already read (:func:`edgepack.tflite_model.read_tflite`)."""
    out = []
    for kind, (ins, outs) in zip(info.ops, info.op_io):
        outs = [i for i in outs if i >= 0]
        out.append((kind, info.tensor(outs[0]).name if outs else "", [i for i in ins if i >= 0], outs))
    return out


def with_ranges(model: bytes, ranges: Mapping[str | int, tuple[float, float]]) -> bytes:
    """The calibrated model with the recorded min/max of the named (or indexed) tensors replaced.
    The floats are written over the old ones in a copy of the flatbuffer (one min and one max each:
    the same size), not by unpacking and packing the whole model (0.25 s a call on common_det, 13
    calls in one ``ranges`` choice)."""
    import struct

    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(model)
    sg = schema.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    found: set = set()
    spots: set[int] = set()  # byte positions written
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        key = i if i in ranges else None
        if key is None:
            name = (t.Name() or b"").decode()
            key = name if name in ranges else None
        q = t.Quantization() if key is not None else None
        if q is None or q.MinLength() != 1 or q.MaxLength() != 1:
            continue
        lo, hi = ranges[key]
        at_min = q._tab.Vector(q._tab.Offset(4))
        at_max = q._tab.Vector(q._tab.Offset(6))
        if at_min in spots or at_max in spots:  # vectors shared between tensors: edit each tensor's own
            return _with_ranges_unpacked(model, ranges)
        spots.update((at_min, at_max))
        struct.pack_into("<f", buf, at_min, min(float(lo), 0.0))
        struct.pack_into("<f", buf, at_max, max(float(hi), 0.0))
        found.add(key)
    _all_found(ranges, found)
    return bytes(buf)


def _all_found(ranges: Mapping, found: set) -> None:
    missing = set(ranges) - found
    if missing:
        raise ConversionError(f"no calibrated range for tensor(s) {sorted(missing, key=str)[:5]}")


def _with_ranges_unpacked(model: bytes, ranges: Mapping[str | int, tuple[float, float]]) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    found = set()
    for i, t in enumerate(obj.subgraphs[0].tensors):
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        key = i if i in ranges else name
        if key in ranges and t.quantization is not None and t.quantization.min is not None:
            lo, hi = ranges[key]
            t.quantization.min = np.asarray([min(float(lo), 0.0)], np.float32)
            t.quantization.max = np.asarray([max(float(hi), 0.0)], np.float32)
            found.add(key)
    _all_found(ranges, found)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


# ops whose output range may equal an input's legitimately (they move or select values)
_PASS_THROUGH = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2", "MAX_POOL_2D", "CONCATENATION",
                 "STRIDED_SLICE", "SLICE", "GATHER", "GATHER_ND", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "TILE",
                 "BROADCAST_TO", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "REDUCE_MAX",
                 "MAXIMUM", "MINIMUM", "QUANTIZE", "DEQUANTIZE"}
# ops whose int8 output scale is fixed by the kernel: their recorded range is not used
_FIXED_RANGE = {"LOGISTIC", "SOFTMAX", "LOG_SOFTMAX", "TANH"}
REPAIR_SLACK = 0.01  # a recorded range more than 1 % wider than the values ever were is replaced


def suspicious_ranges(model: bytes) -> list[int]:
    """Tensors whose recorded range looks like a consumer's: TF 2.19's calibrator records some op
    inputs after the consumer has written its result into their buffer (an in-place op), so the
    input gets the union of both ranges. Seen on decomposed hard-swish, ``x * relu6(x + 3)``: the
    relu6 output (0..6) recorded as the product's -2.25..247.7, which left it 6 int8 levels.
    Returns the indices of op outputs that share a recorded bound with a consumer's output and
    contain its range (consumers that move values, like RESHAPE, and producers whose int8 scale is
    fixed, like LOGISTIC, excepted)."""
    obj = _unpack(model)
    sg = obj.subgraphs[0]
    kinds = op_kinds(obj)

    def rng(i: int) -> tuple[float, float] | None:
        q = sg.tensors[i].quantization
        if q is None or q.min is None or q.max is None or len(q.min) != 1:
            return None
        return float(q.min[0]), float(q.max[0])

    produced = {int(o): kind for kind, op in zip(kinds, sg.operators or [])
                for o in (op.outputs if op.outputs is not None else ())}
    found = set()
    for kind, op in zip(kinds, sg.operators or []):
        if kind in _PASS_THROUGH or op.outputs is None or not len(op.outputs):
            continue
        out = rng(int(op.outputs[0]))
        if out is None:
            continue
        for i in (int(x) for x in (op.inputs if op.inputs is not None else ()) if x >= 0):
            if i not in produced or produced[i] in _FIXED_RANGE or i == int(op.outputs[0]):
                continue  # a graph input or constant, or a range the quantizer does not use
            r = rng(i)
            if r is not None and r[0] <= out[0] and r[1] >= out[1] and (r[0] == out[0] or r[1] == out[1]):
                found.add(i)
    return sorted(found)


def repair_ranges(model: bytes, samples, *, verbose: bool = False) -> tuple[bytes, dict[int, tuple]]:
    """The calibrated ``model`` with the ranges of :func:`suspicious_ranges` checked: each runs
    over the calibration ``samples`` again (a callable giving them, in the isolated child) and a
    recorded range wider than the tensor's values ever were is replaced by those values.
    Returns the model and ``{index: (recorded, observed)}`` of the ranges replaced."""
    from edgepack.converter import isolate

    suspects = suspicious_ranges(model)
    if not suspects:
        return model, {}
    seen = isolate.observe(model, samples(), suspects, verbose=verbose, stage="calibration range check")
    sg = _unpack(model).subgraphs[0]
    fixed = {}
    for i, (lo, hi) in seen.items():
        q = sg.tensors[i].quantization
        rec = (float(q.min[0]), float(q.max[0]))
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # the quantizer's ranges always hold zero
        if (rec[1] - rec[0]) - (hi - lo) > REPAIR_SLACK * (rec[1] - rec[0]):
            fixed[i] = (rec, (lo, hi))
    if not fixed:
        return model, {}
    return with_ranges(model, {i: new for i, (_, new) in fixed.items()}), fixed


def strip_fake_quant(model: bytes) -> bytes:
    """``model`` without the quantize -> (requantize ->) dequantize chains that start and end in
    float: a consumer of the dequantized tensor reads the float tensor itself. Chains that feed an
    int8 op, and the model's own input/output conversions, are kept."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgepack.tflite_model import read_tflite

    info = read_tflite(model, verify=False)  # the quantizer's output, read in place: most have no such chain
    if not _float_round_trips(list(info.ops), [([int(i) for i in ins], [int(o) for o in outs])
                                                for ins, outs in info.op_io],
                              lambda t: info.tensor(t).dtype == "float32"):
        return model
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    strip_float_round_trips(obj)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _float_round_trips(kinds: list[str], io: list[tuple[list[int], list[int]]], is_float) -> dict[int, int]:
    """``{dequantized tensor: float source}`` of the quantize -> (requantize ->) dequantize chains from float."""
    producer = {o: i for i, (_, outs) in enumerate(io) for o in outs}
    remap: dict[int, int] = {}
    for i, (ins, outs) in enumerate(io):
        if kinds[i] != "DEQUANTIZE":
            continue
        t = ins[0]
        while t in producer and kinds[producer[t]] == "QUANTIZE":
            src = io[producer[t]][0][0]
            if is_float(src):
                remap[outs[0]] = src
                break
            t = src
    return remap


def strip_float_round_trips(obj) -> None:
    """In an unpacked model (``flatbuffer_utils``' object tree): readers of ``dequantize(quantize(... float
    x))`` read ``x``, and quantize/dequantize ops no one reads any more go (the model's own inputs and
    outputs keep theirs)."""
    sg = obj.subgraphs[0]
    kinds = op_kinds(obj)
    remap = _float_round_trips(kinds, [([int(i) for i in op.inputs], [int(o) for o in op.outputs])
                                       for op in sg.operators],
                               lambda t: sg.tensors[t].type == 0)  # schema TensorType.FLOAT32
    if remap:
        for op in sg.operators:
            op.inputs = np.asarray([remap.get(int(i), int(i)) for i in op.inputs], np.int32)
        sg.outputs = np.asarray([remap.get(int(i), int(i)) for i in sg.outputs], np.int32)
        for sig in obj.signatureDefs or []:
            for tm in sig.outputs or []:
                tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
    while True:  # drop the quantize/dequantize ops nobody reads any more
        used = {int(i) for op in sg.operators for i in op.inputs} | {int(i) for i in sg.outputs}
        keep = [(op, k) for op, k in zip(sg.operators, kinds)
                if k not in ("QUANTIZE", "DEQUANTIZE") or any(int(o) in used for o in op.outputs)]
        if len(keep) == len(sg.operators):
            return
        sg.operators, kinds = [op for op, _ in keep], [k for _, k in keep]


def _unpack(model: bytes):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
