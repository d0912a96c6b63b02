"""Streaming statistics and the warnings they trigger."""

from __future__ import annotations

import numpy as np

from edgepack.calibration import Dataset
from edgepack.calibration.preprocess import parse_spec
from edgepack.calibration.stats import RunningStats, compare_ranges, data_warnings, scan


def test_streamed_statistics_match_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 10, 10)).astype(np.float32)
    result = scan(Dataset({"in": x}))
    s = result.statistics["in"]
    assert s["samples"] == 500
    assert np.isclose(s["mean"], x.mean(dtype=np.float64), rtol=1e-5)
    assert np.isclose(s["std"], x.std(dtype=np.float64), rtol=1e-5)
    assert s["min"] == float(f"{x.min():.6g}") and s["max"] == float(f"{x.max():.6g}")
    for p in (1, 50, 99):  # from a bounded sample: close, not exact
        assert abs(s["percentiles"][f"p{p}"] - np.percentile(x, p)) < 0.15
    assert result.sha256 == Dataset({"in": x}).sha256()


def test_the_squared_deviations_are_summed_in_row_chunks_the_same(monkeypatch):
    """m2 is accumulated a few rows at a time (a small scratch, not batch-sized copies): with chunks of one row,
    of three and of the whole batch, the same std, for float and for uint8 data."""
    from edgepack.calibration import stats

    rng = np.random.default_rng(2)
    for x in (rng.normal(5.0, 0.5, size=(64, 7, 9)).astype(np.float32), rng.integers(0, 256, (40, 30), np.uint8)):
        got = []
        for rows_bytes in (1, 3 * x[0].nbytes, 1 << 30):
            monkeypatch.setattr(stats, "_ROWS_BYTES", rows_bytes)
            rs = RunningStats(len(x))
            rs.update(x)
            got.append(rs.result()["std"])
        assert got[0] == got[1] == got[2] and np.isclose(got[0], x.std(dtype=np.float64), rtol=1e-5)


def test_finite_values_whose_sum_overflows_are_not_called_infinite():
    """The NaN/Inf check sums each sample first: a sum that overflows (finite values near float32's maximum) is
    checked value by value, not reported as Inf; a real Inf or NaN still is, with its sample."""
    import pytest

    from edgepack.calibration.source import check_finite
    from edgepack.errors import CalibrationError

    big = np.full((3, 4), 3e38, np.float32)
    check_finite(big, np.arange(3), "x.npy", lambda i: f"sample {i}")  # no error
    for bad, kind in ((np.inf, "Inf"), (np.nan, "NaN")):
        with_bad = big.copy()
        with_bad[2, 1] = bad
        with pytest.raises(CalibrationError, match=f"sample 2 contains {kind}"):
            check_finite(with_bad, np.arange(3), "x.npy", lambda i: f"sample {i}")


def test_percentile_sample_stays_bounded():
    rs = RunningStats(expected_samples=100_000)
    for _ in range(100):
        rs.update(np.random.default_rng(1).random((1000, 64)))
    assert sum(len(k) for k in rs._kept) < 2 * 65536


def test_warnings_constant_outside_and_squeezed():
    pre = {"in": parse_spec("mean=127.5,std=127.5")}
    const = {"in": {"min": 0.5, "max": 0.5}}
    assert "constant" in data_warnings(const, pre)[0]
    raw = {"in": {"min": 0.0, "max": 255.0}}  # preprocessing not applied
    assert "far outside [-1, 1]" in data_warnings(raw, pre)[0]
    squeezed = {"in": {"min": -1.0, "max": -0.99}}  # data normalized to [0, 1] first, then again
    assert "normalized already" in data_warnings(squeezed, pre)[0]
    assert data_warnings({"in": {"min": -0.9, "max": 0.95}}, pre) == []
    assert data_warnings(raw, {"in": None}) == []


def test_compare_ranges_flags_unpreprocessed_validation_data():
    ref = {"in": {"min": -1.0, "max": 1.0}}
    assert "far outside the calibration" in compare_ranges({"in": {"min": 0.0, "max": 255.0}}, ref)[0]
    assert compare_ranges({"in": {"min": -0.8, "max": 1.2}}, ref) == []


def test_progress_bar_only_on_a_terminal_and_after_a_moment(monkeypatch):
    import io

    from rich.console import Console

    from edgepack.calibration import progress

    buf = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=buf, force_terminal=True, width=80))
    with progress.progress_bar(10, "reading calibration data", delay=0.0) as advance:
        advance(5)
        advance(5)
    assert "reading calibration data" in buf.getvalue()
    buf.truncate(0)
    with progress.progress_bar(10, "quick pass", delay=60.0) as advance:
        advance(10)
    assert "quick pass" not in buf.getvalue()
    monkeypatch.setattr(progress, "_console", Console(file=io.StringIO(), force_terminal=False))
    with progress.progress_bar(10, "piped", delay=0.0) as advance:
        advance(10)
    assert progress._console.file.getvalue() == ""
