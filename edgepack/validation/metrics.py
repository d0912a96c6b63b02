"""Comparison metrics between a bundle's outputs and the reference model's, and against labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy, as a fraction. Labels may be class ids or one-hot rows."""
    acc = RunningAccuracy()
    acc.update(np.asarray(logits), labels)
    return float(acc.result() or 0.0)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same in both outputs."""
    agree = RunningAgreement()
    agree.update(a, b)
    return float(agree.result() or 0.0)


def _compare(ref: np.ndarray, out: np.ndarray) -> RunningComparison:
    comp = RunningComparison()
    comp.update(ref, out)
    return comp


def max_abs_error(ref: np.ndarray, out: np.ndarray) -> float:
    return _compare(ref, out).max_abs


def cosine_similarity(ref: np.ndarray, out: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs (1.0 = same direction)."""
    return _compare(ref, out).cosine


def _db(signal: float, noise: float) -> float:
    """10·log10(signal / noise) of two sums of squares: inf without noise, else -inf without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−out)²); inf when equal."""
    return _compare(ref, out).sqnr_db


# -- the running forms: accumulated chunk by chunk (validate streams its data); the functions above
#    are the one-chunk case
class RunningAccuracy:
    """Top-1 accuracy over chunks; labels as class ids or one-hot rows."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        y = np.asarray(labels)
        if y.ndim == logits.ndim and y.ndim > 1:
            y = y.argmax(axis=-1)
        self.correct += int(np.sum(np.asarray(logits).argmax(axis=-1) == y.reshape(-1)))
        self.total += len(y)

    def result(self) -> float | None:
        return self.correct / self.total if self.total else None


class RunningAgreement(RunningAccuracy):
    """Fraction of samples whose top-1 class is the same in both outputs."""

    def update(self, a: np.ndarray, b: np.ndarray) -> None:  # type: ignore[override]
        same = np.asarray(a).argmax(axis=-1) == np.asarray(b).argmax(axis=-1)
        self.correct += int(np.sum(same))
        self.total += same.size


class RunningComparison:
    """Max abs error, cosine similarity and SQNR of one output against its reference, from running
    sums (float64): Σ|r−o| max, Σr·o, Σr², Σo², Σ(r−o)²."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.dot = self.rr = self.oo = self.noise = 0.0
        self.equal = True

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        r = np.asarray(ref, np.float64).ravel()
        o = np.asarray(out, np.float64).ravel()
        d = r - o
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
        self.dot += float(np.dot(r, o))
        self.rr += float(np.dot(r, r))
        self.oo += float(np.dot(o, o))
        self.noise += float(np.dot(d, d))
        self.equal = self.equal and bool(np.array_equal(r, o))

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.rr) * math.sqrt(self.oo)
        if denom == 0.0:
            return 1.0 if self.equal else 0.0
        return self.dot / denom

    @property
    def sqnr_db(self) -> float:
        return _db(self.rr, self.noise)


# -- per slice: a wide-range part of an output must not hide a ruined narrow-range part -------------
MAX_FEATURE_SLICES = 256  # rank >= 3: 4 + 80 COCO classes fit
MAX_HEAD_SLICES = 64  # rank 2: a small head's columns; a wider one is a class vector


def feature_axis(shape: tuple[int | None, ...] | list, override: int | None = None) -> int | None:
    """The axis along which an output is judged slice by slice (batch axis 0 included in ``shape``).

    The rule: an output of rank 3 or more is sliced along its smallest non-batch axis of 2 to
    :data:`MAX_FEATURE_SLICES` elements (the last such axis on a tie) — the 4 + K rows of a
    ``1×(4+K)×anchors`` detector output, the 6 columns of ``1×3549×6``, an image's channels; a
    rank-2 output along its last axis when it has 2 to :data:`MAX_HEAD_SLICES` elements — the
    columns of an ``N×7`` regression head, the classes of an ``N×10`` classifier. Any other output
    (``N×1000`` classes, ``N×1``) is one slice. ``override`` (``--sqnr-axis NAME:AXIS``, negative
    counts from the end) wins."""
    rank = len(shape)
    if override is not None:
        axis = override if override >= 0 else rank + override
        return axis if 0 < axis < rank else None
    if rank == 2:
        return 1 if isinstance(shape[1], int) and 2 <= shape[1] <= MAX_HEAD_SLICES else None
    best = None
    for axis in range(1, rank):
        size = shape[axis]
        if isinstance(size, int) and 2 <= size <= MAX_FEATURE_SLICES and (best is None or size <= shape[best]):
            best = axis
    return best


class RunningSliceSqnr:
    """SQNR of every slice along ``axis`` (None: the whole tensor is one slice), from running sums.
    Slices whose reference is all zero are left out (no signal to measure noise against)."""

    def __init__(self, axis: int | None) -> None:
        self.axis = axis
        self.rr: np.ndarray | None = None
        self.noise: np.ndarray | None = None

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        r = np.asarray(ref, np.float64)
        d = r - np.asarray(out, np.float64)
        if self.axis is None or self.axis >= r.ndim:
            rr, nn = np.array([np.sum(r * r)]), np.array([np.sum(d * d)])
        else:
            other = tuple(a for a in range(r.ndim) if a != self.axis)
            rr, nn = np.sum(r * r, axis=other), np.sum(d * d, axis=other)
        self.add_sums(rr, nn)

    def add_sums(self, rr: np.ndarray, nn: np.ndarray) -> None:
        """Add per-slice sums of squares (signal, noise) already taken, e.g. from per-sample sums."""
        self.rr = rr if self.rr is None else self.rr + rr
        self.noise = nn if self.noise is None else self.noise + nn

    def per_slice(self) -> list[float | None]:
        """dB per slice; None for a slice with no reference signal."""
        if self.rr is None:
            return []
        return [None if rr == 0.0 else _db(rr, nn) for rr, nn in zip(self.rr, self.noise)]

    @property
    def worst(self) -> tuple[float, int | None]:
        """``(dB, slice index)`` of the worst slice (index None when the output is one slice)."""
        values = [(v, i) for i, v in enumerate(self.per_slice()) if v is not None]
        if not values:
            return math.inf, None
        v, i = min(values)
        return v, (i if self.axis is not None else None)


def slice_sqnr(ref: np.ndarray, out: np.ndarray, axis: int | None) -> tuple[float, int | None]:
    """The worst slice's SQNR (dB) and its index; see :func:`feature_axis` for the axis."""
    s = RunningSliceSqnr(axis)
    s.update(ref, out)
    return s.worst


# -- the user's task metric (--metric FILE.py:FUNCTION) ----------------------------------------------------
MAX_METRIC_BYTES = 16 << 20  # a metric's .py file


def _read_metric_file(path: Path, spec: str) -> bytes:
    """The metric file's bytes: a regular file of at most :data:`MAX_METRIC_BYTES` (never a FIFO or a device)."""
    import os
    import stat

    from edgepack.errors import OptionError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise OptionError("--metric", spec, hint=f"{path} is not a file ({err.strerror or 'cannot be read'})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OptionError("--metric", spec, hint=f"{path} is not a file")
        data = f.read(MAX_METRIC_BYTES + 1)
    if len(data) > MAX_METRIC_BYTES:
        raise OptionError("--metric", spec, hint=f"{path} is larger than the {MAX_METRIC_BYTES >> 20} MiB limit "
                                                 "for a metric file")
    return data


class TaskMetric:
    """The user's own metric for ``--max-drop``: ``FUNCTION(outputs, references, labels)`` in ``FILE.py``
    returns a score, 1.0 = perfect (detection F1 against the source model's detections, mAP against
    labels, exact-string accuracy...). ``outputs`` and ``references`` are lists of arrays, one per
    output, in the source model's layout, batch first; ``labels`` is the evaluation data's ``y`` or None.

    The file is the user's code, named on the command line: it runs in this process, like a plugin.
    """

    def __init__(self, spec: str, *, sha256: str | None = None) -> None:
        """``sha256``: the hash the file must have (``reproduce`` checks the one recorded at convert time);
        the bytes hashed are the bytes run, so the recorded :attr:`sha256` is that of the code that ran."""
        import hashlib
        import importlib.util

        from edgepack.errors import EdgepackError, OptionError
        from edgepack.request import parse_metric

        path, name = parse_metric(spec)
        self.spec = spec
        source = _read_metric_file(path, spec)
        self.sha256 = hashlib.sha256(source).hexdigest()
        if sha256 is not None and self.sha256 != sha256:
            raise OptionError("--metric", spec, hint=f"{path} is not the file the bundle was made with (sha256 "
                                                     "differs from the one in its manifest)")
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(
            f"edgepack_user_metric_{path.stem}", loader=None, origin=str(path)))
        module.__file__ = str(path)
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own file, named on the command line
        except Exception as err:
            raise EdgepackError(f"--metric: importing {path} failed: {type(err).__name__}: {err}",
                                hint="run the file with python to see the whole error") from err
        self.fn = getattr(module, name, None)
        if not callable(self.fn):
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise OptionError("--metric", spec, hint=f"{path} has no function {name}"
                              + (f" (it has: {', '.join(found[:8])})" if found else ""))

    def __call__(self, outputs, references, labels) -> float:
        from edgepack.errors import EdgepackError

        try:
            value = self.fn(list(outputs), list(references), labels)
            value = float(value)
        except Exception as err:
            raise EdgepackError(f"--metric {self.spec} raised {type(err).__name__}: {err}",
                                hint="fix the metric function (it gets outputs, references, labels)") from err
        if not math.isfinite(value):
            raise EdgepackError(f"--metric {self.spec} returned {value}", hint="return a finite score, 1.0 = perfect")
        return value

    # how a pooled metric pools its samples, when the function says so (``FUNCTION.counts`` and
    # ``FUNCTION.from_counts``): the bootstrap then resamples per-sample counts (validation/intervals.py)
    @property
    def counts(self):
        fn = getattr(self.fn, "counts", None)
        return (lambda outputs, references, labels: fn(list(outputs), list(references), labels)) if callable(fn) else None

    @property
    def from_counts(self):
        fn = getattr(self.fn, "from_counts", None)
        return fn if callable(fn) else None
