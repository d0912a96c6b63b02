"""Verifying a ``.tflite`` flatbuffer in Python before any interpreter (C++) sees it.

No flatbuffer verifier of the TFLite schema is exposed to Python in this stack: TensorFlow's and
tflite-runtime's Python interpreters build from an unverified buffer, and LiteRT's C entry point
(``LiteRtCreateModelFromBuffer``) verifies but then aborts the process on some structurally valid,
semantically broken models. So edgepack verifies here, in two layers:

1. **Structure** — every table, vtable, offset, string and vector the schema reaches is bounds-checked
   against the buffer length as the generated reader walks it (the checks of flatbuffers'
   ``Verifier``: root and table positions, vtable size and table size, forward offsets, strings
   with their terminator, vector lengths). The walk is the generated object API's full unpack, with
   its ``Table`` swapped for :class:`_CheckedTable`, so no field the schema knows is skipped.
2. **References** — tensor, buffer, opcode, subgraph and signature indices point at things that
   exist; shapes are sane; constant data has the size its shape and type say; names are UTF-8.

Python cannot read out of bounds, so a corrupt file ends as :class:`CorruptModel`; kernels can
still misbehave on a verified model, so edgepack also runs interpreters in a child process.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
from collections.abc import Iterator
from typing import Any

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_MAX_DIM = 1 << 31
_lock = threading.Lock()

# bytes per element of a TFLite tensor type (None: variable or packed, not size-checked)
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 18: 2}


class CorruptModel(ValueError):
    """The buffer is not a well-formed TFLite model; the message says where."""


def _make_checked_table(base: type) -> type:
    class _CheckedTable(base):  # type: ignore[misc, valid-type]
        """flatbuffers' ``Table`` with the bounds checks of the C++ ``Verifier`` on every access."""

        __slots__ = ()

        def __init__(self, buf, pos):
            super().__init__(buf, pos)
            if len(buf):  # Union() starts from an empty placeholder and re-points it
                _check_table(buf, pos)

        def Indirect(self, off):
            return _follow(self.Bytes, off)

        def String(self, off):
            start = _follow(self.Bytes, off)
            length = _u32(self.Bytes, start)
            end = start + 4 + length
            if end >= len(self.Bytes) or self.Bytes[end] != 0:
                raise CorruptModel(f"string at byte {start} ({length} bytes) runs past the end or is unterminated")
            return bytes(self.Bytes[start + 4:end])

        def VectorLen(self, off):
            start = _follow(self.Bytes, self.Pos + off)
            length = _u32(self.Bytes, start)
            if start + 4 + length > len(self.Bytes):
                raise CorruptModel(f"vector at byte {start} of {length} elements runs past the end")
            return length

        def Vector(self, off):
            self.VectorLen(off)
            return _follow(self.Bytes, self.Pos + off) + 4

        def Union(self, t2, off):
            t2.Bytes = self.Bytes
            t2.Pos = _follow(self.Bytes, self.Pos + off)
            _check_table(self.Bytes, t2.Pos)

        def Get(self, flags, off):
            if off < 0 or off + flags.bytewidth > len(self.Bytes):
                raise CorruptModel(f"a {flags.bytewidth}-byte field at byte {off} lies outside the buffer")
            if off % flags.bytewidth:
                raise CorruptModel(f"a {flags.bytewidth}-byte field at byte {off} is misaligned")
            return super().Get(flags, off)

        def GetVectorAsNumpy(self, flags, off):
            start, length = self.Vector(off), self.VectorLen(off)
            if start + length * flags.bytewidth > len(self.Bytes) or start % flags.bytewidth:
                raise CorruptModel(f"vector at byte {start} of {length} elements runs past the end or is misaligned")
            return super().GetVectorAsNumpy(flags, off)

    return _CheckedTable


def _u32(buf, pos: int) -> int:
    if pos < 0 or pos + 4 > len(buf):
        raise CorruptModel(f"offset at byte {pos} lies outside the buffer ({len(buf)} bytes)")
    if pos % 4:
        raise CorruptModel(f"offset or length at byte {pos} is misaligned")
    return _U32.unpack_from(buf, pos)[0]


def _follow(buf, pos: int) -> int:
    """The position a uoffset at ``pos`` points to: forward, inside the buffer."""
    target = pos + _u32(buf, pos)
    if target >= len(buf):
        raise CorruptModel(f"offset at byte {pos} points past the end ({target} of {len(buf)} bytes)")
    return target


def _check_table(buf, pos: int) -> None:
    """A table's start, its vtable and its inline size all lie inside the buffer."""
    if pos < 0 or pos + 4 > len(buf) or pos % 4:
        raise CorruptModel(f"table at byte {pos} lies outside the buffer ({len(buf)} bytes) or is misaligned")
    vtable = pos - _I32.unpack_from(buf, pos)[0]
    if vtable < 0 or vtable + 4 > len(buf) or vtable % 2:
        raise CorruptModel(f"table at byte {pos} has its vtable outside the buffer or misaligned (byte {vtable})")
    vt_size, table_size = _U16.unpack_from(buf, vtable)[0], _U16.unpack_from(buf, vtable + 2)[0]
    if vt_size < 4 or vt_size % 2 or vtable + vt_size > len(buf):
        raise CorruptModel(f"table at byte {pos} has a malformed vtable ({vt_size} bytes at byte {vtable})")
    if table_size < 4 or pos + table_size > len(buf):
        raise CorruptModel(f"table at byte {pos} ({table_size} bytes) runs past the end of the buffer")
    for slot in range(4, vt_size, 2):
        field = _U16.unpack_from(buf, vtable + slot)[0]
        if field and field >= table_size:
            raise CorruptModel(f"table at byte {pos}: field {slot // 2 - 2} lies outside the table")


@contextlib.contextmanager
def _checked_reads() -> Iterator[None]:
    """The generated reader builds ``flatbuffers.table.Table`` objects by name at call time; swap in
    the checked one for the duration of one unpack (under a lock: it is a module attribute)."""
    import flatbuffers.table

    with _lock:
        original = flatbuffers.table.Table
        flatbuffers.table.Table = _make_checked_table(original)
        try:
            yield
        finally:
            flatbuffers.table.Table = original


def unpack_verified(buf: bytes) -> Any:
    """The schema's object tree of ``buf`` (``ModelT``), every read bounds-checked, references checked."""
    from ai_edge_litert import schema_py_generated as schema

    data = buf if isinstance(buf, (bytes, bytearray)) else bytes(buf)  # read in place: models can be GBs
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise CorruptModel("no TFL3 identifier")
    try:
        with _checked_reads():
            model = schema.ModelT.InitFromPackedBuf(data, 0)
    except CorruptModel:
        raise
    except Exception as err:  # struct.error, ValueError from numpy views, ...: still a corrupt buffer
        raise CorruptModel(f"{type(err).__name__}: {err}") from err
    check_references(model, len(data))
    return model


def _in_range(what: str, index: int, count: int, *, optional: bool = False) -> None:
    if not (0 <= index < count or (optional and index == -1)):
        raise CorruptModel(f"{what} refers to index {index} of {count}")


def _utf8(what: str, raw: bytes | None) -> None:
    try:
        (raw or b"").decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptModel(f"{what} is not UTF-8 ({err.reason} at byte {err.start})") from None


def check_references(model: Any, size: int) -> None:
    """Indices, shapes, names and constant sizes of an unpacked model are consistent."""
    buffers, codes = model.buffers or [], model.operatorCodes or []
    subgraphs = model.subgraphs or []
    if not subgraphs:
        raise CorruptModel("the model has no subgraphs")
    for n, oc in enumerate(codes):
        _utf8(f"operator code {n}'s custom name", oc.customCode)
    for b_i, b in enumerate(buffers):
        if getattr(b, "offset", 0) > 1 and b.offset + b.size > size:
            raise CorruptModel(f"buffer {b_i}'s data ({b.size} bytes at byte {b.offset}) lies past the end")
    for s_i, sg in enumerate(subgraphs):
        where = f"subgraph {s_i}"
        tensors = sg.tensors or []
        for t_i, t in enumerate(tensors):
            _check_tensor(t, f"{where} tensor {t_i}", buffers)
        for kind in ("inputs", "outputs"):
            for i in getattr(sg, kind) if getattr(sg, kind) is not None else []:
                _in_range(f"{where} {kind}", int(i), len(tensors))
        for o_i, op in enumerate(sg.operators or []):
            _in_range(f"{where} operator {o_i}'s opcode", int(op.opcodeIndex), len(codes))
            for kind in ("inputs", "outputs", "intermediates"):
                for i in getattr(op, kind) if getattr(op, kind) is not None else []:
                    _in_range(f"{where} operator {o_i} {kind}", int(i), len(tensors), optional=kind == "inputs")
            _check_required_inputs(op, codes[op.opcodeIndex], f"{where} operator {o_i}")
    for sig in model.signatureDefs or []:
        _utf8("a signature key", sig.signatureKey)
        _in_range("a signature's subgraph", int(sig.subgraphIndex), len(subgraphs))
        count = len(subgraphs[sig.subgraphIndex].tensors or [])
        for m in [*(sig.inputs or []), *(sig.outputs or [])]:
            _utf8("a signature tensor name", m.name)
            _in_range(f"signature tensor {(m.name or b'').decode('utf-8', 'replace')!r}", int(m.tensorIndex), count)


# Leading inputs that common kernels read without checking for "absent" (-1): LiteRT's fully
# connected kernel, for one, dereferences a missing weights tensor. Found by benchmarks/fuzz.py --run.
_REQUIRED_INPUTS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3,
                    "CONV_3D": 2, "ADD": 2, "SUB": 2, "MUL": 2, "DIV": 2, "MAXIMUM": 2, "MINIMUM": 2,
                    "RESHAPE": 1, "SOFTMAX": 1, "MAX_POOL_2D": 1, "AVERAGE_POOL_2D": 1, "PAD": 2, "MEAN": 2,
                    "QUANTIZE": 1, "DEQUANTIZE": 1, "STRIDED_SLICE": 4, "LOGISTIC": 1, "TANH": 1, "RELU": 1,
                    "BATCH_MATMUL": 2, "GATHER": 2, "TRANSPOSE": 2, "SLICE": 3, "SHAPE": 1}


@functools.lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _check_required_inputs(op: Any, code: Any, where: str) -> None:
    name = _op_names().get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)))
    inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    need = len(inputs) if name in ("CONCATENATION", "PACK") else _REQUIRED_INPUTS.get(name or "", 0)
    if len(inputs) < need or -1 in inputs[:need]:
        raise CorruptModel(f"{where} ({name}) lacks a required input (inputs {inputs})")


def _check_tensor(t: Any, where: str, buffers: list) -> None:
    _utf8(f"{where}'s name", t.name)
    shape = [int(d) for d in (t.shape if t.shape is not None else [])]
    if any(d < -1 or d >= _MAX_DIM for d in shape):
        raise CorruptModel(f"{where} has an impossible shape {shape}")
    q = t.quantization
    scales = len(q.scale) if q is not None and q.scale is not None else 0
    zero_points = len(q.zeroPoint) if q is not None and q.zeroPoint is not None else 0
    if scales > 1:  # per-channel: one scale (and zero point) per slice of the quantized dimension
        _in_range(f"{where}'s quantized dimension", int(q.quantizedDimension), len(shape))
        if shape[q.quantizedDimension] != scales or zero_points not in (0, scales):
            raise CorruptModel(f"{where} has {scales} scales and {zero_points} zero points for dimension "
                               f"{q.quantizedDimension} of shape {shape}")
    if t.buffer:
        _in_range(f"{where}'s buffer", int(t.buffer), len(buffers))
        data = buffers[t.buffer].data
        itemsize = _ITEMSIZE.get(int(t.type))
        if data is not None and len(data) and itemsize and t.sparsity is None and -1 not in shape:
            want = itemsize
            for d in shape:
                want *= d
            if len(data) != want:
                raise CorruptModel(f"{where} holds {len(data)} bytes of constant data, its shape and type "
                                   f"need {want}")
