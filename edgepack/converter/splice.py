"""Mixed-precision candidates spliced from the full-int8 quantization and the calibrated float model.

The accuracy budget's search tries dozens of "these ops float, the rest int8" candidates. Each used
to be a whole ``mlir_quantize`` of the calibrated model (2.9 s on ddddocr's 1,143-op recognizer, most
of it quantizing the same large weights again). A splice builds the same kind of model from two
that exist already, in a fraction of that:

- the *base*: the calibrated model quantized once with the candidate's settings and no op added to
  the denylist (int8 ops, their scales, the ops every quantization keeps float);
- the *calibrated float model*: each op named float is its float op from there (float weights and
  bias, its options), reading float tensors where its producers are float and a DEQUANTIZE of the
  base's int8 tensor where they are int8; where an int8 op reads its result, a QUANTIZE to the
  scale the base gave that tensor; quantize -> dequantize chains that start and end in float are
  dropped (as :func:`~edgepack.converter.requantize.strip_fake_quant` does for the quantizer's).

What it does not redo is the quantizer's scale propagation around the float ops: an int8 tensor keeps
the base's scale where the quantizer, with its neighbour float, might have chosen another (a
concatenation's inputs share its scale in the base). A spliced candidate is therefore measured as
what it is, and the search quantizes its choice again with ``mlir_quantize`` (and keeps that when it
meets the budget too).

``None`` (use the quantizer) where a splice is not sound: several subgraphs, ops with intermediates or
variable tensors, or op lists that do not align (the base's ops are the calibrated model's in order,
with quantize/dequantize ops added).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgepack.converter.requantize import strip_float_round_trips
from edgepack.tflite_model import op_kinds

_QDQ = ("QUANTIZE", "DEQUANTIZE")


def _read(model: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _write(obj) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


class Splicer:
    """Candidates over one base quantization (:meth:`build`); ``ok`` is False when none can be spliced."""

    def __init__(self, calibrated: bytes, base: bytes, *, unpacked: Any = None) -> None:
        """``unpacked``: the calibrated model already read (``flatbuffer_utils``' object tree), shared by the
        splicers over several bases; it is not changed."""
        self.cal = unpacked if unpacked is not None else _read(calibrated)
        self.base = base
        self.cal_kinds = op_kinds(self.cal)
        self.match: dict[int, int] = {}  # base op index -> calibrated op index
        self.ok = self._align()

    def _align(self) -> bool:
        if len(self.cal.subgraphs) != 1 or any(k in _QDQ for k in self.cal_kinds):
            return False
        sg = self.cal.subgraphs[0]
        if any(op.intermediates is not None and len(op.intermediates) for op in sg.operators or []):
            return False
        base = _read(self.base)
        if len(base.subgraphs) != 1:
            return False
        kinds, bsg = op_kinds(base), base.subgraphs[0]
        j = 0
        for i, (kind, op) in enumerate(zip(kinds, bsg.operators or [])):
            if j < len(self.cal_kinds) and kind == self.cal_kinds[j] and _n(op.outputs) == _n(sg.operators[j].outputs):
                self.match[i] = j
                j += 1
            elif kind not in _QDQ:
                return False
        if j != len(self.cal_kinds):
            return False
        # each calibrated activation tensor's counterpart in the base (op outputs in order, graph inputs)
        self.tensor: dict[int, int] = {int(c): int(b) for c, b in zip(sg.inputs, bsg.inputs)}
        for i, j in self.match.items():
            self.tensor.update({int(c): int(b) for c, b in zip(sg.operators[j].outputs, bsg.operators[i].outputs)})
        return True

    def build(self, float_nodes: Iterable[str]) -> bytes | None:
        """The base with the calibrated ops named (node names: first output tensor) float; None when a
        named op cannot be spliced (a variable input, a tensor without a counterpart)."""
        if not self.ok:
            return None
        sg = self.cal.subgraphs[0]
        names = set(float_nodes)
        chosen = {j for j, op in enumerate(sg.operators) if len(op.outputs) and _name(sg, op.outputs[0]) in names}
        # an op with several outputs is denylisted by its type in the quantizer: every op of that type
        multi = {self.cal_kinds[j] for j in chosen if len(sg.operators[j].outputs) > 1}
        chosen |= {j for j, k in enumerate(self.cal_kinds) if k in multi}
        try:
            return _Splice(self, chosen).run()
        except _NotSpliceable:
            return None


class _NotSpliceable(Exception):
    pass


class _Splice:
    """One candidate: the base read afresh, its ops rewritten in order."""

    def __init__(self, splicer: Splicer, chosen: set[int]) -> None:
        self.s, self.chosen = splicer, chosen
        self.obj = _read(splicer.base)
        self.sg = self.obj.subgraphs[0]
        self.csg = splicer.cal.subgraphs[0]
        self.float_of: dict[int, int] = {}  # calibrated tensor -> float tensor of the splice
        self.dequantized: dict[int, int] = {}  # base int8 tensor -> its DEQUANTIZE's output
        self.constants: dict[int, int] = {}  # calibrated constant -> its copy
        self.codes: dict[tuple, int] = {}
        self.ops: list[Any] = []
        self.outputs = {int(t) for t in self.sg.outputs}

    def run(self) -> bytes:
        for i, op in enumerate(self.sg.operators or []):
            j = self.s.match.get(i)
            outs = [int(t) for t in op.outputs]
            if j is not None and j in self.chosen and any(self.sg.tensors[t].type != _float32() for t in outs):
                self._float_op(j, outs)
                continue
            if j is not None:  # an op the base already has float: its outputs are float values
                for c, b in zip(self.csg.operators[j].outputs, outs):
                    if self.sg.tensors[b].type == _float32():
                        self.float_of[int(c)] = b
            self.ops.append(op)
        self.sg.operators = self.ops
        strip_float_round_trips(self.obj)
        _drop_unused(self.obj)
        return _write(self.obj)

    def _float_op(self, j: int, base_outs: list[int]) -> None:
        from tensorflow.lite.python import schema_py_generated as schema

        cop = self.csg.operators[j]
        ins = [self._input(int(t)) for t in cop.inputs]
        outs = []
        for t in cop.outputs:
            nt = self._tensor(self.csg.tensors[int(t)], keep_buffer=False)
            self.float_of[int(t)] = nt
            outs.append(nt)
        op = schema.OperatorT()
        op.opcodeIndex = self._code(cop.opcodeIndex)
        op.inputs, op.outputs = np.asarray(ins, np.int32), np.asarray(outs, np.int32)
        op.builtinOptionsType, op.builtinOptions = cop.builtinOptionsType, cop.builtinOptions
        op.customOptions, op.customOptionsFormat = cop.customOptions, cop.customOptionsFormat
        self.ops.append(op)
        for f, b in zip(outs, base_outs):  # int8 readers of the base tensor: quantized from the float value
            t = self.sg.tensors[b]
            if t.type == _float32():
                raise _NotSpliceable(f"tensor {b} is float in the base and int8 in the calibrated op's other outputs")
            if b in self.outputs:  # the model's output keeps its name; the float value is renamed, as the quantizer does
                self.sg.tensors[f].name = _suffixed(self.sg.tensors[f].name, "1")
            else:
                t.name = _suffixed(t.name, "/int8")
            self.ops.append(self._qdq("QUANTIZE", f, b))

    def _input(self, t: int) -> int:
        if t < 0:
            return -1
        if t in self.float_of:
            return self.float_of[t]
        ct = self.csg.tensors[t]
        if ct.isVariable:
            raise _NotSpliceable("variable tensor")
        data = self.s.cal.buffers[ct.buffer].data if ct.buffer else None
        if data is not None and len(data):
            if t not in self.constants:
                self.constants[t] = self._tensor(ct, keep_buffer=True)
            return self.constants[t]
        b = self.s.tensor.get(t)
        if b is None:
            raise _NotSpliceable(f"no base tensor for calibrated tensor {t}")
        if self.sg.tensors[b].type == _float32():
            return b
        if b not in self.dequantized:
            f = self._tensor(ct, keep_buffer=False, name=_suffixed(ct.name, "/float"))
            self.ops.append(self._qdq("DEQUANTIZE", b, f))
            self.dequantized[b] = f
        return self.dequantized[b]

    def _tensor(self, ct, *, keep_buffer: bool, name: bytes | None = None) -> int:
        """A copy of a calibrated tensor (float, no recorded range); its constant data too."""
        from tensorflow.lite.python import schema_py_generated as schema

        t = copy.copy(ct)
        t.quantization = None
        t.name = name if name is not None else ct.name
        if keep_buffer:
            buf = schema.BufferT()
            buf.data = self.s.cal.buffers[ct.buffer].data
            self.obj.buffers.append(buf)
            t.buffer = len(self.obj.buffers) - 1
        else:
            t.buffer = 0
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def _code(self, cal_index: int) -> int:
        oc = self.s.cal.operatorCodes[cal_index]
        key = (oc.builtinCode, oc.deprecatedBuiltinCode, oc.customCode, oc.version)
        if key not in self.codes:
            for i, mine in enumerate(self.obj.operatorCodes):
                if (mine.builtinCode, mine.deprecatedBuiltinCode, mine.customCode, mine.version) == key:
                    self.codes[key] = i
                    break
            else:
                self.obj.operatorCodes.append(copy.copy(oc))
                self.codes[key] = len(self.obj.operatorCodes) - 1
        return self.codes[key]

    def _qdq(self, kind: str, src: int, dst: int):
        from tensorflow.lite.python import schema_py_generated as schema

        code = getattr(schema.BuiltinOperator, kind)
        key = (code, min(code, 127), None, 1)
        if key not in self.codes:
            for i, oc in enumerate(self.obj.operatorCodes):
                if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                    self.codes[key] = i
                    break
            else:
                oc = schema.OperatorCodeT()
                oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
                self.obj.operatorCodes.append(oc)
                self.codes[key] = len(self.obj.operatorCodes) - 1
        op = schema.OperatorT()
        op.opcodeIndex = self.codes[key]
        op.inputs, op.outputs = np.asarray([src], np.int32), np.asarray([dst], np.int32)
        return op


def _drop_unused(obj) -> None:
    """Tensors and buffers no op, input, output or signature names any more (the int8 weights of the
    ops now float), renumbered."""
    sg = obj.subgraphs[0]
    used = {int(i) for op in sg.operators for i in (*op.inputs, *op.outputs) if int(i) >= 0}
    used |= {int(i) for i in (*sg.inputs, *sg.outputs)}
    for sig in obj.signatureDefs or []:
        used |= {int(tm.tensorIndex) for tm in (*(sig.inputs or []), *(sig.outputs or []))}
    if len(used) == len(sg.tensors):
        return
    order = sorted(used)
    new = {old: i for i, old in enumerate(order)}
    sg.tensors = [sg.tensors[i] for i in order]

    def m(ix) -> Any:
        return np.asarray([new[int(i)] if int(i) >= 0 else -1 for i in ix], np.int32)

    for op in sg.operators:
        op.inputs, op.outputs = m(op.inputs), m(op.outputs)
    sg.inputs, sg.outputs = m(sg.inputs), m(sg.outputs)
    for sig in obj.signatureDefs or []:
        for tm in (*(sig.inputs or []), *(sig.outputs or [])):
            tm.tensorIndex = new[int(tm.tensorIndex)]
    meta = list(obj.metadata or [])
    bufs = sorted({0} | {int(t.buffer) for t in sg.tensors} | {int(x.buffer) for x in meta})
    bnew = {old: i for i, old in enumerate(bufs)}
    obj.buffers = [obj.buffers[i] for i in bufs]
    for t in (*sg.tensors, *meta):
        t.buffer = bnew[int(t.buffer)]


def _suffixed(name, suffix: str) -> bytes:
    name = name or b""
    return (name if isinstance(name, bytes) else name.encode()) + suffix.encode()


def _n(ix) -> int:
    return 0 if ix is None else len(ix)


def _name(sg, t) -> str:
    name = sg.tensors[int(t)].name or b""
    return name.decode() if isinstance(name, bytes) else name


def _float32() -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.TensorType.FLOAT32
