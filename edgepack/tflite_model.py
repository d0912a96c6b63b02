"""Reading a ``.tflite`` flatbuffer: tensors, quantization, ops, signatures, and the mode it was
quantized to — read back from the tensor types, never taken from the options that produced it.

Uses the flatbuffer schema that ships with ai-edge-litert, so ``inspect`` never imports TensorFlow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import BundleError

_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
           7: "int16", 8: "complex64", 9: "int8", 10: "float64", 13: "resource", 15: "uint32",
           16: "uint16", 17: "int4", 18: "bfloat16"}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    dtype: str
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    constant: bool

    @property
    def scale(self) -> float | None:
        return self.scales[0] if len(self.scales) == 1 else None

    @property
    def zero_point(self) -> int | None:
        return self.zero_points[0] if len(self.zero_points) == 1 else None

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclass(frozen=True)
class TfliteModel:
    """What a ``.tflite`` file holds, as plain data."""

    size: int
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]  # tensor indices, graph order
    outputs: tuple[int, ...]
    ops: tuple[str, ...]  # op name per operator, execution order (main subgraph)
    signature_inputs: dict[str, int]  # signature name -> tensor index (serving_default / first)
    signature_outputs: dict[str, int]
    subgraphs: int
    # per operator (execution order, main subgraph): its input and output tensor indices (-1: optional, absent)
    op_io: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.ops).items()))

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    @property
    def quantization_mode(self) -> str:
        """``int8``, ``uint8`` (int8 inside, uint8 I/O), ``int8-float-io``, ``int16x8``, ``float16``,
        ``dynamic`` or ``none``."""
        io = set(self.inputs) | set(self.outputs)
        io_types = {self.tensors[i].dtype for i in io}
        acts = [t for t in self.tensors if not t.constant and t.index not in io and t.dtype != "resource"]
        if not acts:  # a single-op graph: only its I/O tensors carry activations
            acts = [self.tensors[i] for i in io]
        # Integer tensors without a scale are plain integer data (indices, int compare), not quantized.
        act_types = Counter(t.dtype if t.scales or t.dtype not in ("int8", "int16") else "int"
                            for t in acts)
        weights = {t.dtype for t in self.tensors if t.constant and len(t.shape) >= 2}
        quantized_acts = act_types["int8"] + act_types["int16"]
        quantized_io = {self.tensors[i].dtype for i in io if self.tensors[i].scales}
        if act_types["int16"] and act_types["int16"] >= act_types["int8"] or "int16" in quantized_io:
            return "int16x8"
        # int8 activations at all: an integer model, some of whose ops may stay float (accuracy budget)
        if quantized_acts:
            if "uint8" in quantized_io and io_types <= {"uint8", "int32", "int64", "bool"}:
                return "uint8"
            return "int8" if io_types <= {"int8", "uint8", "int32", "int64", "bool"} else "int8-float-io"
        if weights & {"int8", "int4"}:
            return "dynamic"
        if "float16" in weights:
            return "float16"
        return "none"

    @property
    def granularity(self) -> str | None:
        """``per-channel`` when any weight tensor has one scale per channel, ``per-tensor`` when
        weights are quantized with one scale, None for float models."""
        quantized = [t for t in self.tensors if t.constant and t.scales and t.dtype in ("int8", "int4", "int16")
                     and len(t.shape) >= 2]
        if not quantized:
            return None
        return "per-channel" if any(t.per_channel for t in quantized) else "per-tensor"


def read_tflite(source: str | Path | bytes, *, verify: bool = True) -> TfliteModel:
    """Parse and verify a ``.tflite`` file or buffer (:mod:`edgepack.tflite_verify`); one-line
    :class:`BundleError` when it is not a well-formed TFLite model. ``verify=False`` is for bytes
    the converter made in this process (the accuracy budget's candidates): read in place, without
    the object tree and the bounds checks a model from outside needs (ddddocr's 295-op detector: 28 ms, not 72)."""
    from edgepack.tflite_verify import CorruptModel, unpack_verified

    if not verify and isinstance(source, (bytes, bytearray)):
        return _summarize_in_place(bytes(source))

    name = "<buffer>"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            buf = Path(source).read_bytes()
        except OSError as err:
            raise BundleError(f"{name}: cannot read ({err.strerror})") from err
    else:
        buf = bytes(source)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise BundleError(f"{name}: not a TFLite model (no TFL3 identifier)",
                          hint="give a .tflite file or a bundle folder")
    try:
        model = unpack_verified(buf)
    except CorruptModel as err:
        raise BundleError(f"{name}: corrupt TFLite flatbuffer ({err})",
                          hint="re-create it with 'edgepack convert'") from err
    return _summarize(model, len(buf))


def op_kinds(model) -> list[str]:
    """The op types of an unpacked model's (``ModelT``) first subgraph in execution order: builtin
    names (``CONV_2D``), ``CUSTOM:<code>`` for custom ops."""
    codes = _code_names((oc.builtinCode, oc.deprecatedBuiltinCode, oc.customCode) for oc in model.operatorCodes or [])
    return [codes[op.opcodeIndex] for op in (model.subgraphs[0].operators or [])]


def _code_names(codes) -> list[str]:
    """Names of operator codes given as ``(builtin code, deprecated builtin code, custom code)``."""
    from ai_edge_litert import schema_py_generated as schema

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = []
    for builtin, deprecated, custom in codes:
        code = max(builtin, deprecated)
        if code == schema.BuiltinOperator.CUSTOM:
            names.append("CUSTOM:" + (custom or b"?").decode())
        else:
            names.append(op_names.get(code, f"OP{code}"))
    return names


def code_names_in_place(m) -> list[str]:
    """The operator code names of a flatbuffer read in place (a schema ``Model``), by code index."""
    return _code_names((c.BuiltinCode(), c.DeprecatedBuiltinCode(), c.CustomCode())
                       for c in (m.OperatorCodes(i) for i in range(m.OperatorCodesLength())))


def _summarize_in_place(buf: bytes) -> TfliteModel:
    """:func:`_summarize`'s plain data, read from the flatbuffer in place (trusted bytes only)."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.Model.GetRootAsModel(buf, 0)
    sg = m.Subgraphs(0)
    nb = m.BuffersLength()
    filled = [bool(b.DataLength() or b.Size()) for b in (m.Buffers(i) for i in range(nb))]

    def ints(n: int, vec) -> tuple[int, ...]:
        return tuple(int(v) for v in vec()) if n else ()

    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        b = t.Buffer()
        tensors.append(Tensor(
            index=i, name=(t.Name() or b"").decode("utf-8"), shape=ints(t.ShapeLength(), t.ShapeAsNumpy),
            shape_signature=None if t.ShapeSignatureIsNone() else ints(t.ShapeSignatureLength(), t.ShapeSignatureAsNumpy),
            dtype=_DTYPES.get(t.Type(), f"type{t.Type()}"),
            scales=tuple(float(s) for s in q.ScaleAsNumpy()) if q is not None and q.ScaleLength() else (),
            zero_points=ints(q.ZeroPointLength(), q.ZeroPointAsNumpy) if q is not None else (),
            constant=bool(b) and b < nb and filled[b]))
    codes = code_names_in_place(m)
    ops, op_io = [], []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        ops.append(codes[op.OpcodeIndex()])
        op_io.append((ints(op.InputsLength(), op.InputsAsNumpy), ints(op.OutputsLength(), op.OutputsAsNumpy)))
    sigs = [m.SignatureDefs(i) for i in range(m.SignatureDefsLength())]
    chosen = next((s for s in sigs if s.SignatureKey() == b"serving_default"), sigs[0] if sigs else None)
    sig_in: dict[str, int] = {}
    sig_out: dict[str, int] = {}
    if chosen is not None and chosen.SubgraphIndex() == 0:
        sig_in = {(chosen.Inputs(j).Name() or b"").decode(): int(chosen.Inputs(j).TensorIndex())
                  for j in range(chosen.InputsLength())}
        sig_out = {(chosen.Outputs(j).Name() or b"").decode(): int(chosen.Outputs(j).TensorIndex())
                   for j in range(chosen.OutputsLength())}
    return TfliteModel(size=len(buf), tensors=tuple(tensors), inputs=ints(sg.InputsLength(), sg.InputsAsNumpy),
                       outputs=ints(sg.OutputsLength(), sg.OutputsAsNumpy), ops=tuple(ops),
                       signature_inputs=sig_in, signature_outputs=sig_out, subgraphs=m.SubgraphsLength(),
                       op_io=tuple(op_io))


def _summarize(model, size: int) -> TfliteModel:
    """Plain data of a verified model (indices already checked in range, names UTF-8)."""

    sg = model.subgraphs[0]
    buffers = model.buffers or []

    def is_const(t) -> bool:
        if not t.buffer or t.buffer >= len(buffers):
            return False
        b = buffers[t.buffer]
        return (b.data is not None and len(b.data) > 0) or bool(getattr(b, "size", 0))

    tensors = []
    for i, t in enumerate(sg.tensors or []):
        q = t.quantization
        scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
        zps = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ()))
        tensors.append(Tensor(
            index=i, name=(t.name or b"").decode("utf-8"),
            shape=tuple(int(d) for d in (t.shape if t.shape is not None else ())),
            shape_signature=tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else None,
            dtype=_DTYPES.get(t.type, f"type{t.type}"), scales=scales, zero_points=zps, constant=is_const(t)))

    ops = tuple(op_kinds(model))
    op_io = tuple((tuple(int(i) for i in (op.inputs if op.inputs is not None else ())),
                   tuple(int(i) for i in (op.outputs if op.outputs is not None else ())))
                  for op in (sg.operators or []))

    sig_in: dict[str, int] = {}
    sig_out: dict[str, int] = {}
    sigs = model.signatureDefs or []
    chosen = next((s for s in sigs if s.signatureKey == b"serving_default"), sigs[0] if sigs else None)
    if chosen is not None and chosen.subgraphIndex == 0:
        sig_in = {(m.name or b"").decode(): int(m.tensorIndex) for m in chosen.inputs or []}
        sig_out = {(m.name or b"").decode(): int(m.tensorIndex) for m in chosen.outputs or []}
    return TfliteModel(size=size, tensors=tuple(tensors),
                       inputs=tuple(int(i) for i in (sg.inputs if sg.inputs is not None else ())),
                       outputs=tuple(int(i) for i in (sg.outputs if sg.outputs is not None else ())), ops=ops,
                       signature_inputs=sig_in, signature_outputs=sig_out, subgraphs=len(model.subgraphs),
                       op_io=op_io)


def with_graph_outputs(model: bytes, outputs: Sequence[int], *, drop_signatures: bool = False) -> bytes:
    """``model`` (a converter-made flatbuffer, nothing appended after it) whose first subgraph has the tensors
    ``outputs`` (indices) as its outputs, written without unpacking the model: a new int32 vector appended at
    the end and the subgraph's ``outputs`` field pointed at it (a flatbuffer's offsets point forward, so the end is
    reachable from any table). ``drop_signatures``: the signature defs, which name the old outputs, pointed at an
    empty vector. Unpacking and packing layout_cdla's model took 0.13 s a call, ``ranges`` makes eight or more;
    it is done only for a subgraph with no ``outputs`` field to point."""
    import struct

    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    sg = root.Subgraphs(0)
    field = sg._tab.Offset(8)  # SubGraph.outputs: vtable slot 2
    if not field:
        return _outputs_unpacked(model, outputs, drop_signatures)
    buf = bytearray(model)
    buf += bytes(-len(buf) % 4)
    vector = len(buf)
    buf += struct.pack(f"<I{len(outputs)}i", len(outputs), *(int(o) for o in outputs))
    _point(buf, sg._tab.Pos + field, vector)
    signatures = root._tab.Offset(18)  # Model.signature_defs: vtable slot 7
    if drop_signatures and signatures:
        empty = len(buf)
        buf += bytes(4)
        _point(buf, root._tab.Pos + signatures, empty)
    return bytes(buf)


def _outputs_unpacked(model: bytes, outputs: Sequence[int], drop_signatures: bool) -> bytes:
    """:func:`with_graph_outputs` by unpacking the model and packing it again."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    obj.subgraphs[0].outputs = np.asarray(list(outputs), np.int32)
    if drop_signatures:
        obj.signatureDefs = []
    builder = flatbuffers.Builder(1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _point(buf: bytearray, field_at: int, target: int) -> None:
    """Write the unsigned forward offset from the offset field at ``field_at`` to ``target``."""
    import struct

    struct.pack_into("<I", buf, field_at, target - field_at)
