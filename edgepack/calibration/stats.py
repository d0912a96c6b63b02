"""Per-input statistics of a data pass, computed streaming, and the warnings they give rise to.

min, max, mean and std are exact (merged batch by batch with Chan's formula, in float64);
percentiles come from a seeded, bounded sample of the values (at most ~64k per input), so the pass
needs the same memory for a hundred samples or a million.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.calibration.dataset import Dataset, combine_hashers, new_hashers, update_hashers
from edgepack.calibration.preprocess import Preprocess

log = logging.getLogger(__name__)
PERCENTILES = (1, 5, 50, 95, 99)
_KEEP = 1 << 16  # values kept per input for the percentiles
_BATCH = 64


class RunningStats:
    """Streaming statistics of one input's values."""

    def __init__(self, expected_samples: int, seed: int = 0) -> None:
        self.samples = 0
        self.count = 0
        self.min, self.max = math.inf, -math.inf
        self.mean, self.m2 = 0.0, 0.0
        self._rng = np.random.default_rng(seed)
        # Each sample gives `per` values; when there are more samples than room, only some give any.
        self._per = max(1, _KEEP // max(expected_samples, 1))
        self._p_take = min(1.0, _KEEP / max(expected_samples, 1))
        self._kept: list[np.ndarray] = []

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch).reshape(len(batch), -1)
        if x.size == 0:
            return
        n_b = x.size
        mean_b = float(x.mean(dtype=np.float64))
        m2_b = _squared_deviations(x, mean_b)
        delta = mean_b - self.mean
        total = self.count + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.count = total
        self.samples += len(x)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        take = self._rng.random(len(x)) < self._p_take
        if take.any():
            rows = x if take.all() else x[take]
            cols = self._rng.integers(0, rows.shape[1], size=(len(rows), min(self._per, rows.shape[1])))
            self._kept.append(np.take_along_axis(rows, cols, axis=1).ravel().astype(np.float32))

    def result(self) -> dict[str, Any]:
        kept = np.concatenate(self._kept) if self._kept else np.zeros(1, np.float32)
        pct = np.percentile(kept, PERCENTILES)
        std = math.sqrt(self.m2 / self.count) if self.count else 0.0
        return {"samples": self.samples, "min": _r(self.min), "max": _r(self.max), "mean": _r(self.mean),
                "std": _r(std), "percentiles": {f"p{p}": _r(float(v)) for p, v in zip(PERCENTILES, pct)}}


_ROWS_BYTES = 1 << 22  # rows squared at a time in m2: a 4 MB scratch, not two copies of the batch


def _squared_deviations(x: np.ndarray, mean: float) -> float:
    """The sum of ``(x - mean)²`` over a 2-D batch, accumulated in float64, in row chunks of about 4 MB squared in
    place: no float64 copy and no batch-sized temporaries (two of them cost 2.6 s against 0.3 s on 200 of
    layout_cdla's 800x608 inputs, the allocations' page faults included)."""
    rows = max(1, _ROWS_BYTES // max(x.shape[1] * x.itemsize, 1))
    center = x.dtype.type(mean) if x.dtype.kind == "f" else mean
    total = 0.0
    for start in range(0, len(x), rows):
        d = x[start:start + rows] - center
        np.square(d, out=d)
        total += float(d.sum(dtype=np.float64))
    return total


def _r(x: float) -> float:
    return float(f"{x:.6g}")


@dataclass
class ScanResult:
    statistics: dict[str, dict[str, Any]]
    sha256: str


def scan(data: Dataset, *, seed: int = 0, progress: Callable[[int], None] | None = None) -> ScanResult:
    """One pass over ``data``: reads (and so checks) every sample, hashes them and gathers statistics."""
    from concurrent.futures import ThreadPoolExecutor

    stats = {name: RunningStats(len(data), seed) for name in data.names}
    hashers = new_hashers(data.names)
    # each batch hashed on a second thread while its statistics are counted (hashlib and NumPy's loops release
    # the GIL): on 200 of layout_cdla's inputs the hash alone took 0.7 s
    with ThreadPoolExecutor(1) as pool:
        for chunk in data.batches(_BATCH):
            hashed = pool.submit(update_hashers, hashers, chunk)
            for name, batch in chunk.items():
                stats[name].update(batch)
            hashed.result()
            if progress:
                progress(len(next(iter(chunk.values()))))
    return ScanResult({k: s.result() for k, s in stats.items()}, combine_hashers(hashers))


def collector(names: list[str], expected: int) -> tuple[Callable[[dict[str, np.ndarray]], None],
                                                        Callable[[], dict[str, dict[str, Any]]]]:
    """``(observe, results)`` for gathering statistics from batches another pass reads anyway."""
    stats = {name: RunningStats(expected) for name in names}

    def observe(chunk: dict[str, np.ndarray]) -> None:
        for name, batch in chunk.items():
            if name in stats:
                stats[name].update(batch)

    return observe, lambda: {k: s.result() for k, s in stats.items()}


def data_warnings(statistics: Mapping[str, Mapping[str, Any]],
                  preprocessing: Mapping[str, Preprocess | None]) -> list[str]:
    """Constant inputs, and values far outside (or squeezed inside) what the preprocessing implies."""
    out = []
    for name, s in statistics.items():
        lo, hi = s["min"], s["max"]
        if lo == hi:
            out.append(f"input {name!r}: every value is {lo:g} (constant); the quantization range will be "
                       "degenerate; is this the right data?")
            continue
        p = preprocessing.get(name)
        implied = p.implied_range() if p is not None else None
        if implied is None:
            continue
        ilo, ihi = implied
        span = ihi - ilo
        if lo < ilo - 0.1 * span or hi > ihi + 0.1 * span:
            out.append(f"input {name!r}: values span [{lo:g}, {hi:g}], far outside [{ilo:g}, {ihi:g}] that "
                       f"preprocessing '{p.spec_string()}' gives 8-bit data; was it applied twice or not at all?")
        elif hi - lo < 0.05 * span:
            out.append(f"input {name!r}: values span only [{lo:g}, {hi:g}] of the [{ilo:g}, {ihi:g}] that "
                       f"preprocessing '{p.spec_string()}' gives 8-bit data; was the data normalized already?")
    return out


def compare_ranges(current: Mapping[str, Mapping[str, Any]],
                   reference: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Warnings for inputs whose values lie far outside the calibration data's (validate vs convert)."""
    out = []
    for name, s in current.items():
        ref = reference.get(name)
        if not ref:
            continue
        span = max(ref["max"] - ref["min"], 1e-12)
        if s["min"] < ref["min"] - span or s["max"] > ref["max"] + span:
            out.append(f"input {name!r}: data spans [{s['min']:g}, {s['max']:g}], far outside the calibration "
                       f"data's [{ref['min']:g}, {ref['max']:g}]; is it preprocessed the same way?")
    return out


def describe(statistics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per input, for ``-v``."""
    lines = []
    for name, s in statistics.items():
        pct = " ".join(f"{k}={v:g}" for k, v in s["percentiles"].items())
        lines.append(f"input {name!r}: {s['samples']} samples, min {s['min']:g} max {s['max']:g} "
                     f"mean {s['mean']:g} std {s['std']:g} ({pct})")
    return lines
