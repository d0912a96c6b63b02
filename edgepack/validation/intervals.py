"""Intervals: a figure measured on n samples carries its uncertainty (the home of every interval:
used by the accuracy budget's search and by ``validate``).

"Met" means the interval's bound meets the budget: the lower bound of top-1 agreement or accuracy
(Wilson), of the worst slice's SQNR (bootstrap over samples); the upper bound of an accuracy drop
(Newcombe's paired interval: bundle and reference are judged on the same samples) or of a task
metric's drop (paired bootstrap over samples). Bootstraps are seeded: the same data gives the same
interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A figure measured on ``n`` samples and its two-sided ``confidence`` interval [low, high]."""

    value: float
    low: float
    high: float
    n: int
    confidence: float
    method: str  # wilson | newcombe-paired | bootstrap | bootstrap-paired (a difference of two quantizations)

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        """``0.930 [0.897, 0.954], n=300`` (``scale=100``: in points)."""
        def f(v: float) -> str:
            return "inf" if v == math.inf else ("-inf" if v == -math.inf else f"{v * scale:.{digits}f}")

        return f"{f(self.value)} [{f(self.low)}, {f(self.high)}], n={self.n}"

    def to_dict(self, digits: int = 5) -> dict[str, Any]:
        def r(v: float) -> float | None:
            return round(v, digits) if math.isfinite(v) else None  # JSON has no inf: null = unbounded/exact

        return {"value": r(self.value), "low": r(self.low), "high": r(self.high), "n": self.n,
                "confidence": self.confidence, "method": self.method}


def z_value(confidence: float) -> float:
    """The two-sided normal quantile: 1.95996 at 0.95."""
    from statistics import NormalDist

    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _wilson(k: float, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k <= 0 else max(0.0, (centre - half) / denom)  # exact at the ends, not 1 - 2e-16
    return low, 1.0 if k >= n else min(1.0, (centre + half) / denom)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson's score interval of a proportion k/n (top-1 agreement or accuracy): 40 of 40 at 0.95
    gives [0.912, 1]."""
    low, high = _wilson(k, n, z_value(confidence))
    return Interval(k / n if n else math.nan, low, high, n, confidence, "wilson")


def paired_drop_interval(reference_correct: np.ndarray, bundle_correct: np.ndarray,
                         confidence: float = CONFIDENCE) -> Interval:
    """The accuracy drop (reference − bundle, a fraction) judged on the same samples: Newcombe's
    interval for a difference of paired proportions (Stat. Med. 1998, method 10: Wilson intervals of
    both accuracies, combined with the continuity-corrected correlation of the pairs)."""
    ref = np.asarray(reference_correct, bool).ravel()
    out = np.asarray(bundle_correct, bool).ravel()
    counts = (int(np.sum(ref & out)), int(np.sum(ref & ~out)), int(np.sum(~ref & out)), int(np.sum(~ref & ~out)))
    return _newcombe(*counts, confidence)


def _newcombe(a: int, b: int, c: int, d: int, confidence: float) -> Interval:
    """a: both right, b: only the reference right, c: only the bundle right, d: both wrong."""
    n = a + b + c + d
    if n == 0:
        return Interval(math.nan, -1.0, 1.0, 0, confidence, "newcombe-paired")
    z = z_value(confidence)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n, z)
    l2, u2 = _wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins:
        num = a * d - b * c
        phi = (max(num - n / 2, 0.0) if num > 0 else num) / math.sqrt(margins)
    theta = p1 - p2
    lower = theta - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = theta + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return Interval(theta, max(lower, -1.0), min(upper, 1.0), n, confidence, "newcombe-paired")


def resample_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(resamples, n)`` bootstrap weights: how often each sample is drawn in each resample (seeded)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2  # no interpolation: inf (an exact resample) stays inf
    return float(np.quantile(values, alpha, method="lower")), float(np.quantile(values, 1 - alpha, method="higher"))


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, value: float,
                       confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile bootstrap over samples: ``statistic(indices)`` on ``resamples`` seeded resamples."""
    values = np.array([statistic(i) for i in resample_indices(n, resamples, seed)], np.float64)
    return percentile_interval(values, value, n, confidence)


def per_sample_slice_sums(ref: np.ndarray, out: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(signal, noise)`` sums of squares per sample and per slice, ``(n, slices)`` (samples on axis 0)."""
    r = np.asarray(ref, np.float64)
    d = r - np.asarray(out, np.float64)
    n = r.shape[0]
    if axis is None or axis >= r.ndim or axis == 0:
        return np.sum((r * r).reshape(n, -1), axis=1)[:, None], np.sum((d * d).reshape(n, -1), axis=1)[:, None]
    other = tuple(a for a in range(1, r.ndim) if a != axis)
    return np.sum(r * r, axis=other), np.sum(d * d, axis=other)


def worst_slice_sqnr_interval(signal: np.ndarray, noise: np.ndarray, confidence: float = CONFIDENCE,
                              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The worst slice's SQNR (dB) with a bootstrap interval over samples, from per-sample sums."""
    n = signal.shape[0]
    value = float(_worst_db(signal.sum(axis=0), noise.sum(axis=0)))
    counts = resample_counts(n, resamples, seed).astype(np.float64)
    low, high = _percentiles(_worst_db(counts @ signal, counts @ noise), confidence)
    return Interval(value, low, high, n, confidence, "bootstrap")


def _worst_db(rr: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """The lowest SQNR (dB) over the last axis's slices from their signal and noise sums (inf: exact)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        db = np.where(nn == 0, np.inf, 10.0 * np.log10(rr / np.where(nn == 0, 1.0, nn)))
    db = np.where(rr == 0, np.nan, db)  # no signal: the slice is left out
    db = np.where(np.all(np.isnan(db), axis=-1, keepdims=True), np.inf, db)
    return np.nanmin(db, axis=-1)


def sqnr_difference_interval(signal: np.ndarray, noise_a: np.ndarray, noise_b: np.ndarray,
                             confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                             seed: int = BOOTSTRAP_SEED) -> Interval:
    """How far quantization A's worst-slice SQNR is above B's (dB; negative: below), paired bootstrap: both
    from per-sample sums ``(n, slices)`` of the same reference (``signal``) on the same resamples, so that
    what the two share (hard samples, the reference's own spread) cancels. Whole-tensor figures: one column
    per output (:func:`per_sample_slice_sums` with ``axis=None``). Where both are exact the difference is 0."""
    n = signal.shape[0]

    def diff(s: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
        a, b = _worst_db(s, na), _worst_db(s, nb)
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b)), 0.0, a - b)

    value = float(diff(signal.sum(axis=0), noise_a.sum(axis=0), noise_b.sum(axis=0)))
    counts = resample_counts(n, resamples, seed).astype(np.float64)
    low, high = _percentiles(diff(counts @ signal, counts @ noise_a, counts @ noise_b), confidence)
    return Interval(value, low, high, n, confidence, "bootstrap-paired")


def task_difference_interval(task: Callable[[list, list, Any], float], outputs_a: Sequence[np.ndarray],
                             outputs_b: Sequence[np.ndarray], references: Sequence[np.ndarray],
                             labels: np.ndarray | None = None, confidence: float = CONFIDENCE) -> Interval:
    """A task metric of quantization A minus B's (both scored against ``references``), paired bootstrap
    over samples: the same resamples for both (per-sample scores or counts where the metric gives them)."""
    value = float(task(list(outputs_a), list(references), labels)) - float(task(list(outputs_b), list(references), labels))
    a = _resampled_task(task, outputs_a, references, labels)
    b = _resampled_task(task, outputs_b, references, labels)
    low, high = _percentiles(a - b, confidence)
    return Interval(value, low, high, len(references[0]), confidence, "bootstrap-paired")


def samples_to_show_agreement(target: float, confidence: float = CONFIDENCE) -> int | None:
    """The fewest samples on which full agreement's Wilson lower bound reaches ``target`` (None: never,
    a target of 1 cannot be shown on samples)."""
    if target >= 1:
        return None
    z2 = z_value(confidence) ** 2
    return max(1, math.ceil(target * z2 / (1 - target) - 1e-9))


def samples_to_show_drop(max_drop: float, reference_accuracy: float = 1.0, confidence: float = CONFIDENCE,
                         limit: int = 10**7) -> int | None:
    """The fewest samples on which a bundle right exactly where the reference is right shows an
    accuracy drop of at most ``max_drop`` (a fraction), for a reference of that accuracy (None: not
    within ``limit``)."""
    def upper(n: int) -> float:
        right = round(reference_accuracy * n)
        return _newcombe(right, 0, 0, n - right, confidence).high

    if max_drop <= 0 or upper(limit) > max_drop:
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if upper(mid) <= max_drop else (mid + 1, hi)
    return lo


def agreement_interval(per_sample: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Top-1 agreement from each sample's share of agreeing positions: Wilson when a sample is one
    decision (a classifier), else a bootstrap of the mean over samples (positions of one sample, a
    sequence's steps, are not independent)."""
    a = np.asarray(per_sample, np.float64).ravel()
    if np.all((a == 0) | (a == 1)):
        return wilson_interval(int(a.sum()), a.size, confidence)
    counts = resample_counts(a.size).astype(np.float64)
    low, high = _percentiles(counts @ a / a.size, confidence)
    return Interval(float(a.mean()), low, high, a.size, confidence, "bootstrap")


def resample_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[np.ndarray]:
    """The seeded bootstrap resamples (sample indices) :func:`bootstrap_interval` draws, to be reused
    for paired statistics (a candidate and its reference on the same resamples)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(resamples)]


def percentile_interval(values: np.ndarray, value: float, n: int, confidence: float = CONFIDENCE) -> Interval:
    """A percentile-bootstrap interval from a statistic's values on the resamples."""
    low, high = _percentiles(np.asarray(values, np.float64), confidence)
    return Interval(value, low, high, n, confidence, "bootstrap")


def task_drop_interval(task: Callable[[list, list, Any], float], outputs: Sequence[np.ndarray],
                       references: Sequence[np.ndarray], labels: np.ndarray | None, value: float,
                       confidence: float = CONFIDENCE, reference_values: np.ndarray | None = None) -> Interval:
    """The drop of a task metric (reference's score − bundle's, a fraction), paired bootstrap over
    samples: both scored on the same resamples (``reference_values``: the reference's scores on
    :func:`resample_indices`, when already computed)."""
    if reference_values is None:
        reference_values = task_reference_values(task, references, labels)
    ours = _resampled_task(task, outputs, references, labels)
    return percentile_interval(reference_values - ours, value, len(references[0]), confidence)


def task_reference_values(task: Callable[[list, list, Any], float], references: Sequence[np.ndarray],
                          labels: np.ndarray | None) -> np.ndarray:
    """The reference's own task score on each of :func:`resample_indices`' resamples."""
    return _resampled_task(task, references, references, labels)


def _resampled_task(task: Callable[[list, list, Any], float], outputs: Sequence[np.ndarray],
                    references: Sequence[np.ndarray], labels: np.ndarray | None) -> np.ndarray:
    """The task score of ``outputs`` on each of :func:`resample_indices`' resamples: from per-sample
    scores when the metric is their mean (:func:`per_sample_scores`: n calls, not one per resample),
    from per-sample counts when the metric says how it pools them (:func:`per_sample_counts`: one call),
    else by scoring each resample."""
    n = len(references[0])
    resamples = resample_indices(n)
    scores = per_sample_scores(task, outputs, references, labels, resamples[0])
    if scores is not None:
        return scores[np.stack(resamples)].mean(axis=1)
    counts = per_sample_counts(task, outputs, references, labels, resamples[0])
    if counts is not None:
        try:
            values = np.array([float(task.from_counts(counts[idx].sum(axis=0))) for idx in resamples], np.float64)
        except Exception:  # noqa: BLE001 - from_counts failing on a resample: every resample scored instead
            values = None
        if values is not None and np.all(np.isfinite(values)):
            return values
    return np.array([task([a[i] for a in outputs], [a[i] for a in references], None if labels is None else labels[i])
                     for i in resamples], np.float64)


def per_sample_scores(task: Callable[[list, list, Any], float], outputs: Sequence[np.ndarray],
                      references: Sequence[np.ndarray], labels: np.ndarray | None,
                      check: np.ndarray) -> np.ndarray | None:
    """Each sample's score, when the metric of any set of samples is the mean of them (exact strings, top-1,
    a per-sample error), else None (a pooled F1, a median...): checked on every sample, each half, and
    ``check`` (a resample, repeats included), to 1e-6 (float32 sums). A metric that fails on one sample is scored per
    resample (None)."""
    n = len(references[0])
    if n < 4:
        return None

    def score(idx: np.ndarray) -> float:
        return float(task([a[idx] for a in outputs], [a[idx] for a in references],
                          None if labels is None else labels[idx]))

    try:
        scores = np.array([score(np.array([i])) for i in range(n)], np.float64)
        sets = (np.arange(n), np.arange(n // 2), np.arange(n // 2, n), np.asarray(check))
        mean_of_each = all(math.isclose(scores[idx].mean(), score(idx), rel_tol=0, abs_tol=1e-6) for idx in sets)
    except Exception:  # noqa: BLE001 - the user's metric on one sample: scored per resample instead, where it
        return None  # raises (if it does) as it always has
    return scores if mean_of_each and np.all(np.isfinite(scores)) else None


def per_sample_counts(task: Callable[[list, list, Any], float], outputs: Sequence[np.ndarray],
                      references: Sequence[np.ndarray], labels: np.ndarray | None,
                      check: np.ndarray) -> np.ndarray | None:
    """A pooled metric's per-sample counts, ``(samples, k)``, when it says how it pools them: the metric
    function carries ``counts(outputs, references, labels) -> (samples, k)`` and ``from_counts(sums) ->
    float`` (a box F1: each image's true/false positives and misses, F1 from their sums; see
    ``examples/task_metrics.py``); checked like :func:`per_sample_scores` (the metric on every sample, each
    half and ``check`` equals ``from_counts`` of the counts' sums, to 1e-6), else None."""
    counts_of, combine = getattr(task, "counts", None), getattr(task, "from_counts", None)
    n = len(references[0])
    if not callable(counts_of) or not callable(combine) or n < 4:
        return None

    def score(idx: np.ndarray) -> float:
        return float(task([a[idx] for a in outputs], [a[idx] for a in references],
                          None if labels is None else labels[idx]))

    try:
        counts = np.asarray(counts_of(list(outputs), list(references), labels), np.float64)
        if counts.ndim != 2 or len(counts) != n or not np.all(np.isfinite(counts)):
            return None
        sets = (np.arange(n), np.arange(n // 2), np.arange(n // 2, n), np.asarray(check))
        agree = all(math.isclose(float(combine(counts[idx].sum(axis=0))), score(idx), rel_tol=0, abs_tol=1e-6)
                    for idx in sets)
    except Exception:  # noqa: BLE001 - counts that do not work: scored per resample, as the metric always was
        return None
    return counts if agree else None
