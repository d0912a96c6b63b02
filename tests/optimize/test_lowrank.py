"""Low-rank factorization: full rank reproduces the model, lower rank cuts MACs exactly as counted."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import OptionError
from edgepack.request import LowRankSpec, parse_low_rank


def _model(k):
    """Dense, strided 1×1, k×k ("same" and strided "valid") and a 3×5 kernel, channels last."""
    k.utils.set_random_seed(0)
    inp = k.Input((12, 11, 3), name="image")
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    x = k.layers.Conv2D(24, 3, strides=2, padding="valid", name="c2")(x)
    x = k.layers.Conv2D(20, 1, strides=2, padding="same", name="pw")(x)
    x = k.layers.Conv2D(8, (3, 5), strides=(1, 2), padding="same", name="c3")(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(32, activation="relu", name="d1")(x)
    return k.Model(inp, k.layers.Dense(5, name="logits")(x), name="lr")


@pytest.fixture(params=["keras", "tf_keras"])
def model(request):
    return _model(__import__(request.param))


def test_full_rank_reproduces_the_outputs(model):
    from edgepack.optimize.lowrank import SUFFIX, factorize

    x = np.random.default_rng(0).random((4, 12, 11, 3), dtype=np.float32)
    full, report = factorize(model, LowRankSpec(energy=1.0), only_if_cheaper=False)
    assert type(full).__module__.split(".")[0] == type(model).__module__.split(".")[0]  # same Keras flavour
    assert [la.kind for la in report.layers] == ["spatial", "spatial", "conv1x1", "spatial", "dense", "dense"]
    assert all(la.factorized and la.rank_after == la.rank_before for la in report.layers)
    assert {f"{n}{SUFFIX}" for n in ("c1", "c2", "pw", "c3", "d1", "logits")} <= {la.name for la in full.layers}
    assert full.layers[-1].name == "logits"  # the second layer of a pair keeps the name: outputs keep theirs
    np.testing.assert_allclose(np.asarray(full(x)), np.asarray(model(x)), atol=1e-4, rtol=1e-4)
    # at full rank no pair is cheaper: by default nothing is factorized
    same, report = factorize(model, LowRankSpec(energy=1.0))
    assert not any(la.factorized for la in report.layers) and len(same.layers) == len(model.layers)


def test_lower_rank_cuts_macs_as_computed(model):
    from edgepack.optimize.lowrank import factorize
    from edgepack.optimize.measure import count_macs, layer_macs

    small, report = factorize(model, LowRankSpec(rank=2), keep_layers=("c1",))
    by = {la.name: la for la in report.layers}
    assert "c1" not in by  # --keep-layers
    d1 = by["d1"]  # Dense 48 -> 32 at rank 2: 2 * (48 + 32) MACs instead of 48 * 32
    assert (d1.macs_before, d1.macs_after, d1.rank_after) == (48 * 32, 2 * (48 + 32), 2)
    pw = by["pw"]  # 1×1, 24 -> 20 channels on 3×3 positions
    assert (pw.macs_before, pw.macs_after) == (9 * 24 * 20, 9 * 2 * (24 + 20))
    c2 = by["c2"]  # 3×3 valid stride 2, 16 -> 24 on 12×11: 5×5 out; 3×1 keeps the 11 columns
    assert c2.macs_after == 5 * 11 * 3 * 16 * 2 + 5 * 5 * 3 * 2 * 24
    cut = sum(la.macs_before - la.macs_after for la in report.layers if la.factorized)
    assert count_macs(small) == count_macs(model) - cut
    new = layer_macs(small)
    assert new["d1_lowrank"] + new["d1"] == d1.macs_after
    assert small.count_params() < model.count_params()


def test_energy_picks_the_smallest_rank():
    from edgepack.optimize.lowrank import choose_rank

    s = np.array([3.0, 2.0, 1.0])  # cumulative energy 9/14, 13/14, 1
    assert [choose_rank(s, LowRankSpec(energy=e)) for e in (0.5, 0.643, 0.9, 0.93, 1.0)] == [1, 2, 2, 3, 3]
    assert choose_rank(s, LowRankSpec(rank=8)) == 3


@pytest.mark.parametrize("text, expected", [("0.9", LowRankSpec(energy=0.9)), ("1", LowRankSpec(energy=1.0)),
                                            ("RANK:4", LowRankSpec(rank=4))])
def test_low_rank_values(text, expected):
    assert parse_low_rank(text) == expected


@pytest.mark.parametrize("text", ["0", "-0.5", "1.5", "nan", "inf", "rank:0", "rank:x", "rank:", "energy:0.9", "abc"])
def test_bad_low_rank_values_are_option_errors(text):
    with pytest.raises(OptionError, match="--low-rank"):
        parse_low_rank(text)
