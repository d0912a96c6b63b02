"""Structured channel pruning: a genuinely smaller model whose wiring stays consistent."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import OptionError, UsageError


def _kmod(flavour: str):
    if flavour == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


def build_branchy(k):
    """Residual Add, Concatenate, depthwise (multiplier 1 and 2), BatchNorm, Flatten → Dense."""
    L = k.layers
    i = k.Input((8, 8, 3), name="image")
    x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(i)))
    y = L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", name="dw")(x))
    x = L.Add(name="add")([x, L.Conv2D(8, 1, name="pw")(y)])
    z = L.Conv2D(6, 3, padding="same", name="c2")(x)
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(z)
    x = L.Concatenate(name="cat")([x, z, d])
    x = L.Conv2D(10, 1, activation="relu", name="c3")(x)
    x = L.Flatten(name="flat")(L.MaxPooling2D(name="pool")(x))
    x = L.Dense(12, activation="relu", name="d1")(x)
    return k.Model(i, L.Dense(4, name="out")(x), name="branchy")


def _zero(model, name: str, channels: list[int], mult: int = 1) -> None:
    """Make output channels of ``name`` exactly zero (kernel, bias, and BN shift)."""
    layer = model.get_layer(name)
    ws = layer.get_weights()
    if type(layer).__name__ == "BatchNormalization":
        gamma, beta, mean, var = ws
        beta[channels], mean[channels] = 0.0, 0.0
        layer.set_weights([gamma, beta, mean, var])
        return
    kernel, bias = ws
    if type(layer).__name__ == "DepthwiseConv2D":
        kernel[:, :, channels, :] = 0.0
        bias[[c * mult + j for c in channels for j in range(mult)]] = 0.0
    else:
        kernel[..., channels] = 0.0
        bias[channels] = 0.0
    layer.set_weights([kernel, bias])


def _randomize_bn(model) -> None:
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])


@pytest.fixture(params=["keras3", "tf_keras"])
def branchy(request):
    k = _kmod(request.param)
    k.utils.set_random_seed(0)
    model = build_branchy(k)
    _randomize_bn(model)
    return model


X = np.random.default_rng(0).random((5, 8, 8, 3), dtype=np.float32)


def test_zero_ratio_keeps_the_model_exactly(branchy):
    from edgepack.optimize.prune import prune_channels

    pruned, report = prune_channels(branchy, 0.0)
    assert pruned.count_params() == branchy.count_params()
    np.testing.assert_array_equal(np.asarray(pruned(X)), np.asarray(branchy(X)))
    assert all(before == after for before, after in report.layers.values())


def test_removing_dead_channels_keeps_outputs(branchy):
    """Channels made exactly zero rank lowest; removing them everywhere must not change the outputs.
    This checks the index bookkeeping through Add, Concatenate, depthwise multipliers, BN and Flatten."""
    from edgepack.optimize.prune import prune_channels

    dead = [0, 2, 5, 7]
    for name in ("c1", "bn1", "dw", "bn2", "pw"):
        _zero(branchy, name, dead)
    _zero(branchy, "c2", [1, 3, 5])
    _zero(branchy, "dw2", [1, 3, 5], mult=2)
    _zero(branchy, "c3", [0, 1, 4, 6, 9])
    _zero(branchy, "d1", [0, 3, 4, 7, 8, 11])
    pruned, report = prune_channels(branchy, 0.5)
    assert report.layers == {"c1": (8, 4), "pw": (8, 4), "c2": (6, 3), "c3": (10, 5), "d1": (12, 6),
                             "out": (4, 4)}
    assert report.groups == 1  # c1 and pw are tied by the residual Add
    assert pruned.get_layer("dw2").get_weights()[0].shape == (3, 3, 3, 2)
    assert pruned.get_layer("c3").get_weights()[0].shape == (1, 1, 4 + 3 + 6, 5)
    assert pruned.get_layer("d1").get_weights()[0].shape == (4 * 4 * 5, 6)
    np.testing.assert_allclose(np.asarray(pruned(X)), np.asarray(branchy(X)), rtol=1e-5, atol=1e-5)


def test_half_the_channels_cut_macs_and_params(branchy):
    from edgepack.optimize.measure import count_macs
    from edgepack.optimize.prune import prune_channels

    pruned, _ = prune_channels(branchy, 0.5, norm="l2")
    assert type(pruned).__module__.split(".")[0] == type(branchy).__module__.split(".")[0]
    assert count_macs(pruned) <= 0.55 * count_macs(branchy)
    assert pruned.count_params() < 0.5 * branchy.count_params()
    assert pruned.output_shape[-1] == 4 and pruned.get_layer("out").units == 4  # outputs never pruned


def test_layer_patterns_steer_pruning(branchy):
    from edgepack.optimize.prune import prune_channels

    _, only_d = prune_channels(branchy, 0.5, prune_layers=("d*",))
    assert only_d.layers["d1"] == (12, 6) and only_d.layers["c3"] == (10, 10)
    _, keep_pw = prune_channels(branchy, 0.5, keep_layers=("pw",))
    # pw is tied to c1 through the Add: keeping pw keeps the whole group
    assert keep_pw.layers["c1"] == (8, 8) and keep_pw.layers["pw"] == (8, 8)
    assert keep_pw.layers["c2"] == (6, 3)


def test_group_ratios_override_the_global_ratio(branchy):
    from edgepack.optimize.prune import prune_channels

    pruned, report = prune_channels(branchy, 0.0, group_ratios=(("d1", 0.75), ("c2", 0.5), ("*", 0.0)))
    assert report.layers["d1"] == (12, 3) and report.layers["c2"] == (6, 3)  # first matching pattern wins
    assert report.layers["c3"] == (10, 10) and report.layers["c1"] == (8, 8)  # "*" and the global 0.0 elsewhere
    assert report.to_dict()["group_ratios"] == {"d1": 0.75, "c2": 0.5, "*": 0.0}
    with pytest.raises(UsageError):
        prune_channels(branchy, 0.0, group_ratios=(("c2", 1.0),))


def test_prune_group_needs_channel_pruning():
    from edgepack.request import OptimizeOptions

    with pytest.raises(UsageError, match="--prune-group .* needs --prune channels"):
        OptimizeOptions(prune="sparsity:0.5", prune_groups=(("c*", 0.5),))
    with pytest.raises(OptionError, match="each pattern once"):
        OptimizeOptions(prune="channels:0", prune_groups=(("c*", 0.5), ("c*", 0.25)))


def test_unknown_layers_freeze_their_channels():
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(8, 3, name="c1")(i)
    x = keras.layers.Reshape((4 * 4 * 8,), name="reshape")(x)  # not understood: c1 stays whole
    x = keras.layers.Dense(10, name="d1")(x)
    model = keras.Model(i, keras.layers.Dense(3, name="out")(x))
    from edgepack.optimize.prune import prune_channels

    pruned, report = prune_channels(model, 0.5)
    assert report.layers["c1"] == (8, 8) and report.layers["d1"] == (10, 5)
    assert np.asarray(pruned(np.zeros((2, 6, 6, 1), "float32"))).shape == (2, 3)


@pytest.mark.parametrize("text, kind, ratio, mn", [("channels:0.5", "channels", 0.5, None),
                                                    ("sparsity:0.8", "sparsity", 0.8, None),
                                                    ("2:4", "m_by_n", 0.0, (2, 4))])
def test_parse_prune(text, kind, ratio, mn):
    from edgepack.request import parse_prune

    spec = parse_prune(text)
    assert (spec.kind, spec.ratio, spec.m_by_n) == (kind, ratio, mn)


@pytest.mark.parametrize("text", ["channels:1.5", "channels:x", "filters:0.5", "4:2", "channels"])
def test_parse_prune_rejects(text):
    from edgepack.request import parse_prune

    with pytest.raises(OptionError, match="--prune"):
        parse_prune(text)


def test_ratio_out_of_range_is_a_usage_error(branchy):
    from edgepack.optimize.prune import prune_channels

    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        prune_channels(branchy, 1.0)


def test_round_to_keeps_multiples_of_n_channels():
    import keras

    from edgepack.optimize.prune import prune_channels

    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(40, 3, padding="same", name="a")(i)
    x = L.Conv2D(12, 3, padding="same", name="b")(x)
    x = L.Conv2D(6, 3, padding="same", name="c")(x)
    model = keras.Model(i, L.Dense(3, name="out")(L.Flatten()(x)))
    _, exact = prune_channels(model, 0.6)
    assert exact.layers["a"] == (40, 16) and exact.layers["b"] == (12, 5) and exact.layers["c"] == (6, 2)
    pruned, rounded = prune_channels(model, 0.6, round_to=8)
    # 16 stays 16; 5 rounds up to one multiple (8); a space smaller than the multiple stays whole
    assert rounded.layers["a"] == (40, 16) and rounded.layers["b"] == (12, 8) and rounded.layers["c"] == (6, 6)
    assert rounded.to_dict()["round_to"] == 8
    assert pruned.get_layer("b").get_weights()[0].shape == (3, 3, 16, 8)


def test_prune_round_must_be_positive(tmp_path):
    from edgepack import api

    with pytest.raises(OptionError, match="--prune-round"):
        api.convert(model=tmp_path / "m.keras", output=tmp_path / "b", prune="channels:0.5", prune_round=0)
