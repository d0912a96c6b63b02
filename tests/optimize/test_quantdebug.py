"""Where quantization error comes from: range choices, local error, every tensor's values."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.optimize.quantdebug import local_errors, plot_sensitivity, range_choices


def test_a_range_wider_than_the_values_is_narrowed_and_a_fitting_one_left_alone():
    rng = np.random.default_rng(0)
    gate = rng.uniform(0, 6, size=20_000)  # relu6 values recorded with a product's range, as TF's calibrator can
    fits = rng.uniform(-1, 1, size=20_000)
    values = {"gate": [gate], "fits": [fits]}
    recorded = {"gate": (-2.25, 247.7), "fits": (float(fits.min()), float(fits.max()))}
    for method in ("mse", "percentile"):
        chosen = {c.tensor: c for c in range_choices(values, recorded, method)}
        assert set(chosen) == {"gate"}, method
        c = chosen["gate"]
        assert 5.9 <= c.range[1] <= 0.1 * 247.7 and c.mse_ratio < 0.1 and c.method == method


def test_mse_keeps_outliers_that_carry_more_error_than_the_grid():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 0.1, 19_800), rng.normal(0, 5, 200)])  # clipping the 1 % costs more
    assert range_choices({"x": [v]}, {"x": (float(v.min()), float(v.max()))}, "mse") == []


def test_local_error_is_in_quantization_steps():
    f = [np.linspace(-1, 1, 1000)]
    q = [f[0] + 0.02]  # off by two steps of 0.01
    err = local_errors({"t": f, "float_in_candidate": f}, {"t": q, "float_in_candidate": f}, {"t": 0.01})
    assert err["t"] == pytest.approx(2.0, rel=1e-6)
    assert err["float_in_candidate"] == 0.0


def test_picture_is_a_png():
    rows = [{"index": i, "op": "CONV_2D", "node": f"n{i}", "scaled_rmse": float(i), "gain": 0.5 if i == 2 else None,
             "kept": "float" if i == 2 else None} for i in range(5)]
    assert plot_sensitivity(rows, "title")[:8] == b"\x89PNG\r\n\x1a\n"
