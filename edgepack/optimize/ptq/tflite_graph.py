"""The calibrated TFLite model as the post-conversion ptq algorithms read it, and LiteRT runs of it.

The converter keeps the calibrated float model (every activation's recorded min/max,
:class:`edgepack.converter.requantize.Calibrated`); the algorithms here (``ranges.py``,
``int8_bias.py``) read its ops, constants and ranges, run it and its int8 quantization on the
calibration samples (LiteRT, every tensor kept), and hand back an edited calibrated model, so that
every later quantization of it (the accuracy budget's candidates, lstm-float) has the edit too.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack._native import capture_native_output
from edgepack.tflite_model import op_kinds, with_graph_outputs


@dataclass
class Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: Any


@dataclass
class TfliteGraph:
    """Ops (execution order), tensors, constants and consumers of one subgraph-0 model."""

    obj: Any  # schema ModelT
    ops: list[Op] = field(default_factory=list)
    consumers: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # tensor -> op positions
    producer: dict[int, int] = field(default_factory=dict)

    @classmethod
    def read(cls, model: bytes) -> TfliteGraph:
        from ai_edge_litert import schema_py_generated as schema

        obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
        g = cls(obj)
        sg = obj.subgraphs[0]
        for pos, (kind, op) in enumerate(zip(op_kinds(obj), sg.operators or [])):
            ins = [int(i) for i in (op.inputs if op.inputs is not None else ())]
            outs = [int(i) for i in (op.outputs if op.outputs is not None else ()) if i >= 0]
            g.ops.append(Op(kind, ins, outs, op.builtinOptions))
            for i in ins:
                if i >= 0:
                    g.consumers[i].append(pos)
            for o in outs:
                g.producer[o] = pos
        return g

    @property
    def tensors(self) -> list[Any]:
        return self.obj.subgraphs[0].tensors

    @property
    def outputs(self) -> list[int]:
        return [int(i) for i in self.obj.subgraphs[0].outputs]

    def name(self, idx: int) -> str:
        n = self.tensors[idx].name
        return n.decode() if isinstance(n, bytes) else (n or "")

    def positions(self, nodes: Iterable[str]) -> set[int]:
        """The positions of the ops named ``nodes`` (a node's name is its first output tensor's, as the
        quantizer's denylist takes it)."""
        wanted = set(nodes)
        return {pos for pos, op in enumerate(self.ops) if op.outputs and self.name(op.outputs[0]) in wanted}

    def shape(self, idx: int) -> tuple[int, ...]:
        s = self.tensors[idx].shape
        return tuple(int(d) for d in (s if s is not None else ()))

    def constant(self, idx: int) -> np.ndarray | None:
        """The value of a constant float32 tensor (weights, biases), else None."""
        if idx < 0:
            return None
        t = self.tensors[idx]
        buf = self.obj.buffers[t.buffer] if t.buffer < len(self.obj.buffers) else None
        if buf is None or buf.data is None or not len(buf.data) or t.type != 0:  # 0: FLOAT32
            return None
        return np.frombuffer(bytes(bytearray(buf.data)), np.float32).reshape(self.shape(idx))

    def recorded_range(self, idx: int) -> tuple[float, float] | None:
        q = self.tensors[idx].quantization
        if q is None or q.min is None or q.max is None or len(q.min) != 1:
            return None
        return float(q.min[0]), float(q.max[0])

    def to_bytes(self) -> bytes:
        from tensorflow.lite.tools import flatbuffer_utils

        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.obj))


def quant_params(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor quantized tensor detail, None for a float one."""
    scales = detail.get("quantization_parameters", {}).get("scales")
    if detail["dtype"] in (np.float32, np.float16) or scales is None or len(scales) != 1:
        return None
    return float(scales[0]), int(detail["quantization_parameters"]["zero_points"][0])


class Runner:
    """A model on LiteRT, in-process: float samples (input-tensor order) in, float outputs out.
    With ``keep`` every tensor is kept (builtin kernels) and :meth:`value` reads any of them
    (dequantized when int8); without, the default kernels run (XNNPACK, as on a phone)."""

    def __init__(self, model: bytes, *, keep: bool = True, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kw: dict[str, Any] = {"experimental_preserve_all_tensors": True,
                              "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} \
            if keep else {"num_threads": threads}
        with capture_native_output():
            self.interp = Interpreter(model_content=bytes(model), **kw)
            self.interp.allocate_tensors()
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()
        self.details = {d["index"]: d for d in self.interp.get_tensor_details()}

    def value(self, idx: int) -> np.ndarray:
        d = self.details[idx]
        v = self.interp.get_tensor(idx)
        q = quant_params(d)
        return np.asarray(v, np.float32) if q is None else (v.astype(np.float32) - q[1]) * q[0]

    def run(self, sample: Sequence[np.ndarray]) -> list[np.ndarray]:
        for d, x in zip(self.inputs, sample):
            q = quant_params(d)
            x = np.asarray(x, np.float32).reshape(d["shape"])
            if q is not None:
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / q[0]) + q[1], info.min, info.max)
            self.interp.set_tensor(d["index"], x.astype(d["dtype"]))
        self.interp.invoke()
        return [self.value(d["index"]) for d in self.outputs]


def output_error(refs: list[list[np.ndarray]], outs: Iterable[list[np.ndarray]]) -> float:
    """How far ``outs`` are from ``refs`` (per sample, per output): the mean over outputs of the
    noise-to-signal ratio in dB, of the whole tensor and of its worst channel (last axis) —
    lower is better."""
    outs = list(outs)
    scores = []
    for k in range(len(refs[0])):
        noise, signal = _channel_sums(refs, outs, k)
        whole = noise.sum() / signal.sum()
        worst = float(np.max(noise / signal)) if len(noise) > 1 else whole
        scores.append(5 * np.log10(max(whole, 1e-30)) + 5 * np.log10(max(worst, 1e-30)))
    return float(np.mean(scores))


def _channel_sums(refs: list[list[np.ndarray]], outs: list[list[np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Output ``k``'s squared error and squared signal per channel (last axis), summed over samples."""
    r = np.stack([s[k] for s in refs]).astype(np.float64)
    e = np.stack([s[k] for s in outs]).astype(np.float64) - r
    c = r.shape[-1] if r.ndim > 1 else 1
    return (e ** 2).reshape(-1, c).sum(0), (r ** 2).reshape(-1, c).sum(0) + 1e-30


def worst_channel_error(refs: list[list[np.ndarray]], outs: Iterable[list[np.ndarray]]) -> float:
    """The worst channel (last axis) of the worst output: its noise-to-signal ratio in dB, over all samples
    (lower is better). :func:`output_error` averages over outputs, so a change that helps most of them can
    hide what it does to one."""
    outs = list(outs)
    ratios = [np.max(np.divide(*_channel_sums(refs, outs, k))) for k in range(len(refs[0]))]
    return float(10 * np.log10(max(float(max(ratios)), 1e-30)))


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class Runners:
    """A model on LiteRT with its default kernels (as :class:`Runner` without ``keep``), either one interpreter on
    every core or, ``parallel``, one interpreter of one thread per core with the samples dealt among them and run
    at once (LiteRT releases the GIL while it runs); four cores at most. Which is faster depends on the graph: an
    op XNNPACK does not take runs on one thread between its partitions — 12 of layout_cdla's inputs on its int8
    model (170 int8 HARD_SWISH) took 2.37 s on one interpreter of two threads, 1.39 s on two of one; the
    recognizer's 0.097 s against 0.098 s, and a second interpreter costs 0.12 s to build. The outputs are the same
    either way (each sample runs whole on one interpreter)."""

    def __init__(self, model: bytes, parallel: bool = False) -> None:
        n = min(4, cores())
        self.runners = [Runner(model, keep=False, threads=1) for _ in range(n)] if parallel and n > 1 \
            else [Runner(model, keep=False, threads=n)]

    def run(self, samples: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        """The model's outputs on each sample, in the samples' order."""
        n = min(len(self.runners), len(samples))
        if n <= 1:
            return [self.runners[0].run(s) for s in samples]
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(lambda k: [self.runners[k].run(s) for s in samples[k::n]], range(n)))
        outs: list[Any] = [None] * len(samples)
        for k, part in enumerate(parts):
            outs[k::n] = part
        return outs


def run_all(model: bytes, samples: Sequence[Sequence[np.ndarray]], parallel: bool = False) -> list[list[np.ndarray]]:
    """The model's outputs on each sample, default kernels (what the bundle runs with on a phone)."""
    return Runners(model, parallel).run(samples)


# producers an output is read through to find where the model's error is measured: a saturating
# softmax/sigmoid hides a logit's error until it flips a decision, so the logits are measured
_SQUASH = {"SOFTMAX", "LOGISTIC", "LOG_SOFTMAX"}
_GATHER = {"CONCATENATION", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE"}


def measure_points(g: TfliteGraph) -> list[str]:
    """Names of the tensors the error is measured on: each output, or the logits behind its
    softmax/sigmoid (through concatenations and reshapes)."""
    found: list[str] = []

    def walk(t: int, depth: int) -> bool:
        pos = g.producer.get(t)
        op = g.ops[pos] if pos is not None else None
        if op is not None and op.kind in _SQUASH:
            found.append(g.name(op.inputs[0]))
            return True
        if op is not None and op.kind in _GATHER and depth < 4:
            hits = [walk(i, depth + 1) for i in op.inputs if i >= 0 and i in g.producer]
            if any(hits):
                for i, hit in zip((i for i in op.inputs if i >= 0 and i in g.producer), hits):
                    if not hit:
                        found.append(g.name(i))
                return True
        return False

    for t in g.outputs:
        if not walk(t, 0):
            found.append(g.name(t))
    return list(dict.fromkeys(found))


def with_outputs(model: bytes, names: Sequence[str]) -> bytes | None:
    """``model`` whose outputs are the tensors ``names`` (signature defs dropped); None when it lacks one of them."""
    from ai_edge_litert import schema_py_generated as schema

    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    if [(sg.Tensors(sg.Outputs(j)).Name() or b"").decode() for j in range(sg.OutputsLength())] == list(names):
        return model  # already its outputs
    index: dict[str, int] = {}
    for i in range(sg.TensorsLength()):
        index.setdefault((sg.Tensors(i).Name() or b"").decode(), i)
    if any(n not in index for n in names):
        return None
    picked = [index[n] for n in names]
    if picked == [int(sg.Outputs(j)) for j in range(sg.OutputsLength())]:
        return model
    return with_graph_outputs(model, picked, drop_signatures=True)


QUICK = 0.05  # seconds: a measure's half that runs faster than this on one interpreter is not tried in parallel


@dataclass
class RunTiming:
    """Whether :class:`Runners` ``parallel`` runs a graph faster (None: not timed yet), and the seconds a sample
    took on one interpreter."""

    parallel: bool | None = None
    single: float | None = None


class Measure:
    """The distance of a model's outputs (or logits, :func:`measure_points`) from the float
    calibrated model's, on fixed samples (:func:`output_error`; lower is better): on all of them
    and on each half. ``quantized``: one quantization of it, to check that its tensors keep the
    names measured."""

    def __init__(self, float_model: bytes, quantized: bytes, samples: Sequence[Sequence[np.ndarray]], *,
                 names: list[str] | None = None, refs: list[list[np.ndarray]] | None = None,
                 worst_channel: bool = False, guard: Sequence[str] = (), timing: RunTiming | None = None) -> None:
        """``timing``: shared with another measure of the same graph (which :class:`Runners` is faster is timed once);
        ``names``: :meth:`points` already read; ``refs``: the float values of the measured tensors (or of
        the float model's outputs when there are none) on ``samples``, already computed (for ``names`` and
        then the ``guard`` tensors not among them); ``worst_channel``: the distance also holds
        :func:`worst_channel_error` of the ``guard`` tensors (the measured ones when none are named), on all
        samples and on each half (:func:`better` keeps no change that raises it on all three)."""
        base = self.points(TfliteGraph.read(float_model), quantized) if names is None else list(names)
        self.measured = len(base)
        self.names = base + [n for n in guard if n not in base] if base and worst_channel else base
        self.guarded = [self.names.index(n) for n in guard] if base and worst_channel and guard else None
        self.samples = samples
        self.worst_channel = worst_channel
        self.timing = timing if timing is not None else RunTiming()
        self.refs = refs if refs is not None else run_all(with_outputs(float_model, self.names) or float_model,
                                                          samples)

    def _run(self, model: bytes, samples: Sequence[Sequence[np.ndarray]], h: int) -> list[list[np.ndarray]]:
        """The model's outputs on ``samples``; until it is known whether :class:`Runners` ``parallel`` is faster on
        this graph, a first half runs on one interpreter and a second half on parallel ones, each timed (building
        the interpreters included)."""
        t = self.timing
        if not len(samples):
            return []
        if t.parallel is not None or cores() < 2:
            return run_all(model, samples, bool(t.parallel))
        parallel = t.single is not None  # a first half was timed: this is a second
        start = time.perf_counter()
        outs = run_all(model, samples, parallel)
        seconds = (time.perf_counter() - start) / len(samples)
        if parallel:
            t.parallel = seconds < t.single
        elif len(samples) == h:  # a half that ran in a moment has nothing to gain (a test's tiny nets)
            t.single = seconds
            t.parallel = False if seconds * len(samples) < QUICK else None
        return outs

    @staticmethod
    def points(float_graph: TfliteGraph, quantized: bytes) -> list[str]:
        """The tensors measured (:func:`measure_points`), or none (the outputs) when ``quantized`` lacks one."""
        names = measure_points(float_graph)
        return names if with_outputs(quantized, names) is not None else []

    def __call__(self, quantized: bytes, beat: np.ndarray | None = None) -> np.ndarray:
        """``[all samples, first half, second half]`` (then, with ``worst_channel``, the worst channel's
        error on the same three); infinite when the measured tensors are gone. ``beat``: a distance to compare
        with (:func:`better`): when the first half is not below its first half, the second half is not run
        and the figures not measured are infinite — ``better`` refuses it all the same."""
        size = 6 if self.worst_channel else 3
        model = with_outputs(quantized, self.names) if self.names else quantized
        if model is None:
            return np.full(size, np.inf)
        h, n = max(1, len(self.samples) // 2), self.measured or None

        def error(refs: list[list[np.ndarray]], outs: list[list[np.ndarray]]) -> float:
            return output_error([s[:n] for s in refs], [s[:n] for s in outs])

        outs = self._run(model, self.samples[:h], h)
        first = error(self.refs[:h], outs)
        if beat is not None and len(self.samples) > h and not first < beat[1]:
            return np.array([np.inf, first] + [np.inf] * (size - 2))
        outs += self._run(model, self.samples[h:], h)
        halves = ((self.refs, outs), (self.refs[:h], outs[:h]), (self.refs[h:] or self.refs, outs[h:] or outs))
        found = [error(self.refs, outs), first, error(*halves[2])]
        if not self.worst_channel:
            return np.array(found)
        pick = self.guarded

        def guarded(arrays: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
            return arrays if pick is None else [[s[i] for i in pick] for s in arrays]

        return np.array(found + [worst_channel_error(guarded(r), guarded(o)) for r, o in halves])


MARGIN = 0.05  # dB


def better(new: np.ndarray, old: np.ndarray) -> bool:
    """A change is kept when it lowers the error on all samples and on each half: a change that helps one
    half only fits those samples, not the data. Measured with ``worst_channel``, it must also not raise the
    worst channel's error on all samples and on each half at once."""
    if not (new[0] < old[0] - MARGIN and np.all(new[1:3] < old[1:3])):
        return False
    return len(new) <= 3 or not np.all(new[3:] > old[3:])
