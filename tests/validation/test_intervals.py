"""The intervals every budget and validate figure carries (edgepack.validation.intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.validation.intervals import (
    agreement_interval,
    bootstrap_interval,
    paired_drop_interval,
    per_sample_slice_sums,
    samples_to_show_agreement,
    samples_to_show_drop,
    sqnr_difference_interval,
    task_difference_interval,
    wilson_interval,
    worst_slice_sqnr_interval,
    z_value,
)


def test_wilson_known_values():
    assert wilson_interval(40, 40).low == pytest.approx(0.9124, abs=1e-4)  # the 40 of 40
    assert wilson_interval(40, 40).high == 1.0
    i = wilson_interval(279, 300)  # 0.930 on 300 samples
    assert (round(i.low, 3), round(i.high, 3)) == (0.895, 0.954)
    # n/(n + z^2): every sample right
    assert wilson_interval(100, 100).low == pytest.approx(100 / (100 + z_value(0.95) ** 2))
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(5, 10).low == pytest.approx(0.2366, abs=1e-4)
    assert wilson_interval(40, 40, confidence=0.99).low < wilson_interval(40, 40).low
    assert i.format() == "0.930 [0.895, 0.954], n=300"


def test_samples_needed_to_show_a_budget():
    n = samples_to_show_agreement(0.96)
    assert n == 93
    assert wilson_interval(n, n).low >= 0.96 > wilson_interval(n - 1, n - 1).low
    assert samples_to_show_agreement(1.0) is None  # never: the lower bound of n/n is below 1
    m = samples_to_show_drop(0.01)
    right = np.ones(m, bool)
    assert paired_drop_interval(right, right).high <= 0.01 < paired_drop_interval(right[1:], right[1:]).high


def test_paired_drop_interval():
    right = np.ones(80, bool)
    same = paired_drop_interval(right, right)
    # every sample right in both: the drop's upper bound is 1 - Wilson's lower bound of 80/80
    assert same.value == 0 and same.high == pytest.approx(1 - wilson_interval(80, 80).low)
    assert same.low == pytest.approx(-same.high)
    ref = np.r_[np.ones(60, bool), np.zeros(20, bool)]
    out = ref.copy()
    out[:6] = False  # six samples only the reference gets right
    i = paired_drop_interval(ref, out)
    assert i.value == pytest.approx(6 / 80) and i.low < i.value < i.high
    assert i.low > 0  # six one-sided disagreements on 80 samples: a real drop
    swapped = paired_drop_interval(out, ref)  # the difference the other way round: the mirror interval
    assert swapped.low == pytest.approx(-i.high) and swapped.high == pytest.approx(-i.low)
    # pairing counts: the same marginals with the disagreements spread both ways is a wider interval
    both = ref.copy()
    both[:6], both[60:66] = False, True
    assert paired_drop_interval(ref, both).high > paired_drop_interval(ref, ref).high


def test_bootstrap_is_seeded_and_covers():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(200, 6))
    out = ref + rng.normal(size=(200, 6)) * 0.01
    signal, noise = per_sample_slice_sums(ref, out, 1)
    a, b = worst_slice_sqnr_interval(signal, noise), worst_slice_sqnr_interval(signal, noise)
    assert a == b and a.low < a.value < a.high and a.n == 200
    assert a.value == pytest.approx(min(10 * np.log10(np.sum(ref ** 2, 0) / np.sum((ref - out) ** 2, 0))))
    exact = worst_slice_sqnr_interval(*per_sample_slice_sums(ref, ref, 1))
    assert exact.value == exact.low == math.inf and exact.to_dict()["low"] is None
    values = rng.normal(1.0, 1.0, 400)
    mean = bootstrap_interval(lambda idx: float(values[idx].mean()), 400, float(values.mean()))
    assert mean.low < 1.0 < mean.high and mean.high - mean.low == pytest.approx(2 * 1.96 / 20, rel=0.2)


def test_agreement_interval_counts_samples_not_positions():
    one_decision = agreement_interval(np.r_[np.ones(38), np.zeros(2)])
    assert one_decision.method == "wilson" and one_decision.n == 40
    steps = agreement_interval(np.full(40, 0.95))  # 20 steps a sample, 19 agree: 40 samples, not 800
    assert steps.method == "bootstrap" and steps.n == 40 and steps.value == pytest.approx(0.95)


def test_task_drop_bootstrap_reads_per_sample_scores_of_a_mean_metric_and_resamples_a_pooled_one():
    """A metric that is the mean of per-sample scores is called once per sample, not once per resample,
    and gives the interval the resample-by-resample bootstrap gives; a pooled one (an F1 over every
    sample's detections) is scored per resample, as before."""
    from edgepack.validation import intervals as iv

    rng = np.random.default_rng(5)
    refs = [rng.integers(0, 10, (60, 4))]
    outs = [np.where(rng.random((60, 4)) < 0.1, 0, refs[0])]
    calls = {"exact": 0, "pooled": 0}

    def exact(o, r, labels):
        calls["exact"] += 1
        return float(np.mean(np.all(o[0] == r[0], axis=1)))

    def pooled(o, r, labels):  # a share of matching positions over the whole set: the mean of the
        calls["pooled"] += 1  # per-sample shares only when every sample has as many positions
        hits, total = np.sum((o[0] == r[0]) & (r[0] > 2)), np.sum(r[0] > 2)
        return float(hits / max(total, 1))

    fast = iv.task_drop_interval(exact, outs, refs, None, 0.0)
    assert calls["exact"] <= 2 * (60 + 4)  # the reference's and the outputs' per-sample scores and checks
    by_resample = np.array([exact([o[i] for o in outs], [r[i] for r in refs], None)
                            for i in iv.resample_indices(60)])
    expected = iv.percentile_interval(1.0 - by_resample, 0.0, 60)
    assert (fast.low, fast.high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert fast.high > fast.low > 0

    iv.task_drop_interval(pooled, outs, refs, None, 0.0)
    assert calls["pooled"] > iv.BOOTSTRAP_RESAMPLES  # not a mean of per-sample scores: every resample scored
    assert iv.per_sample_scores(pooled, outs, refs, None, iv.resample_indices(60)[0]) is None


def test_a_pooled_metric_that_gives_its_counts_is_resampled_from_them():
    """A pooled F1 that says how it pools (``counts`` per sample, ``from_counts`` of their sums) is called a
    handful of times instead of once per resample, with the interval the per-resample bootstrap gives;
    counts that do not give the metric back are not used."""
    from edgepack.validation import intervals as iv

    rng = np.random.default_rng(7)
    refs = [rng.integers(0, 4, (50, 6))]
    outs = [np.where(rng.random((50, 6)) < 0.15, 0, refs[0])]
    calls = {"f1": 0}

    def counts(o, r, labels):  # per sample: hits, extra boxes, missed boxes
        hit = (o[0] == r[0]) & (r[0] > 0)
        return np.stack([hit.sum(1), ((o[0] > 0) & ~hit).sum(1), ((r[0] > 0) & ~hit).sum(1)], 1)

    def from_counts(c):
        tp, fp, fn = c
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    def f1(o, r, labels):
        calls["f1"] += 1
        return float(from_counts(counts(o, r, labels).sum(0)))

    slow = iv.task_drop_interval(f1, outs, refs, None, 0.0)
    assert calls["f1"] > iv.BOOTSTRAP_RESAMPLES  # no counts: every resample of the candidate scored
    f1.counts, f1.from_counts = counts, from_counts
    calls["f1"] = 0
    fast = iv.task_drop_interval(f1, outs, refs, None, 0.0)
    assert calls["f1"] <= 2 * (50 + 4 + 4)  # the per-sample score check, then the counts' check
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), abs=1e-12) and fast.high > fast.low
    f1.from_counts = lambda c: from_counts(c) * 0.9  # counts that do not give the metric back
    assert iv.per_sample_counts(f1, outs, refs, None, iv.resample_indices(50)[0]) is None


def test_the_example_f1s_give_their_counts():
    """examples/task_metrics.py's box F1s carry counts that give the F1 back (so their budgets bootstrap fast)."""
    import importlib.util

    from edgepack.validation import intervals as iv

    spec = importlib.util.spec_from_file_location("tm", "examples/task_metrics.py")
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    rng = np.random.default_rng(3)
    ref = np.zeros((8, 3549, 6), np.float32)  # YOLOX 416x416: a few confident boxes per image
    for i in range(8):
        cells = rng.choice(3549, 3, replace=False)
        ref[i, cells, :4] = rng.random((3, 4))
        ref[i, cells, 4:] = 0.9
    out = ref.copy()
    out[::3, :, 4] *= rng.random((3, 3549)) > 0.3  # some images lose boxes
    counts = iv.per_sample_counts(tm.yolox_f1, [out], [ref], None, iv.resample_indices(8)[0])
    assert counts is not None and counts.shape == (8, 3) and counts[:, 2].sum() > 0
    assert tm.f1_from_counts(counts.sum(0)) == pytest.approx(tm.yolox_f1([out], [ref]))


def test_a_metric_file_given_with_metric_passes_its_counts_through(tmp_path):
    """``--metric FILE.py:FUNCTION``'s wrapper hands the function's ``counts``/``from_counts`` to the bootstrap."""
    from edgepack.validation import intervals as iv
    from edgepack.validation.metrics import TaskMetric

    (tmp_path / "m.py").write_text(
        "import numpy as np\n"
        "def counts(o, r, labels):\n"
        "    hit = (o[0] == r[0]).sum(1)\n"
        "    return np.stack([hit, o[0].shape[1] - hit], 1)\n"
        "def share(c):\n"
        "    return float(c[0] / (c[0] + c[1]))\n"
        "def pooled(o, r, labels):\n"
        "    return share(counts(o, r, labels).sum(0))\n"
        "pooled.counts, pooled.from_counts = counts, share\n"
        "def plain(o, r, labels):\n"
        "    return pooled(o, r, labels)\n")
    rng = np.random.default_rng(2)
    refs = [rng.integers(0, 3, (20, 5))]
    outs = [np.where(rng.random((20, 5)) < 0.2, 9, refs[0])]
    check = iv.resample_indices(20)[0]
    with_counts = TaskMetric(f"{tmp_path / 'm.py'}:pooled")
    assert iv.per_sample_counts(with_counts, outs, refs, None, check) is not None
    assert TaskMetric(f"{tmp_path / 'm.py'}:plain").counts is None


def test_sqnr_difference_is_paired_and_signed():
    rng = np.random.default_rng(3)
    n = 200
    ref = rng.normal(size=(n, 16, 8))
    hard = np.where(rng.random(n) < 0.1, 10.0, 1.0)[:, None, None]  # hard samples: large error in both
    shared = rng.normal(size=ref.shape) * hard
    a = ref + 0.01 * shared + 0.001 * rng.normal(size=ref.shape)
    b = ref + 0.02 * shared + 0.002 * rng.normal(size=ref.shape)
    sa, na = per_sample_slice_sums(ref, a, 2)
    _, nb = per_sample_slice_sums(ref, b, 2)
    d = sqnr_difference_interval(sa, na, nb)
    assert d.method == "bootstrap-paired" and d.n == n
    assert d.value == pytest.approx(6.02, abs=0.1)  # twice the error: 6 dB
    assert 5.5 < d.low <= d.value <= d.high < 6.5
    # paired: far narrower than the two figures' own intervals, which carry the hard samples' spread
    ia, ib = worst_slice_sqnr_interval(sa, na), worst_slice_sqnr_interval(sa, nb)
    assert d.high - d.low < 0.5 * min(ia.high - ia.low, ib.high - ib.low)
    back = sqnr_difference_interval(sa, nb, na)
    assert (back.value, back.low, back.high) == pytest.approx((-d.value, -d.high, -d.low))
    same = sqnr_difference_interval(sa, na, na)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    exact = sqnr_difference_interval(sa, np.zeros_like(na), np.zeros_like(na))
    assert (exact.value, exact.low, exact.high) == (0.0, 0.0, 0.0)


def test_task_difference_of_two_quantizations_is_paired():
    rng = np.random.default_rng(4)
    n = 400
    ref = rng.normal(size=(n, 10))
    top = ref.argmax(1)

    def flipped(idx):
        out = ref.copy()
        out[idx, (top[idx] + 1) % 10] = ref[idx].max() + 1.0
        return out

    a, b = flipped(np.arange(20)), flipped(np.arange(40))  # b's disagreements hold a's and 20 more

    def top1(outs, refs, labels):
        return float(np.mean(outs[0].argmax(-1) == refs[0].argmax(-1)))

    d = task_difference_interval(top1, [a], [b], [ref])
    assert d.value == pytest.approx(0.05) and d.method == "bootstrap-paired"
    assert 0.02 < d.low < 0.05 < d.high < 0.08  # shown above 0: every discordant sample goes A's way
    assert task_difference_interval(top1, [a], [a], [ref]).high == 0.0
