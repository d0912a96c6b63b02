"""The search space file: knobs onto convert options, grids, and one-line usage errors naming the key."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import UsageError
from edgepack.tune.space import default_space, parse_space


def test_knobs_map_onto_convert_options():
    space = parse_space({"quantize": ["int8", "int16x8"], "prune_channels": {"low": 0.0, "high": 0.5, "step": 0.25},
                         "prune_groups": {"conv*": [0.0, 0.5]}, "qat": [True]})
    # qat is conditional: with int16x8 convert refuses it, so those points are not in the grid
    assert len(list(space.grid())) == 1 * 3 * 2 * 1
    flags = space.to_flags({"quantize": "int16x8", "prune_channels": 0.25, "prune_groups.conv*": 0.5, "qat": True})
    assert flags == {"quantize": "int16x8", "prune": "channels:0.25", "prune_groups": [("conv*", 0.5)], "qat": True}
    # a group alone prunes only that group
    assert space.to_flags({"prune_channels": 0.0, "prune_groups.conv*": 0.5})["prune"] == "channels:0"
    assert space.to_flags({"prune_channels": 0.0, "prune_groups.conv*": 0.0}).get("prune") is None
    assert parse_space({"prune": ["none", "2:4"]}).to_flags({"prune": "none"}) == {"prune": None}


def test_default_space_follows_model_and_target():
    mcu = default_space(keras=True, trainable=True, quantize_modes=("int8",), min_calibration_samples=100)
    names = [d.name for d in mcu.dimensions]
    assert "quantize" not in names and {"prune", "qat", "per_tensor", "calibration_samples"} <= set(names)
    onnx = default_space(keras=False, trainable=True, quantize_modes=("int8", "int16x8"), min_calibration_samples=1)
    assert [d.name for d in onnx.dimensions] == ["quantize", "per_tensor", "calibration_samples"]


@pytest.mark.parametrize("text, key", [
    ("quantise = ['int8']", "unknown key 'quantise'"),
    ("quantize = ['int4']", "'quantize' value 'int4' is not valid"),
    ("per_tensor = 'yes'", "'per_tensor' must be a list"),
    ("prune_channels = {low = 0.0, high = 1.5}", "'prune_channels' bound 1.5 is not valid"),
    ("sparsity = [0.5]\nprune_channels = [0.5]", "'prune_channels' and 'sparsity' both set --prune"),
    ("calibration_samples = []", "'calibration_samples' has no values"),
    ("[prune_groups]\n'conv*' = [2]", "'prune_groups.conv*' value 2 is not valid"),
    ("qat = [true", "not valid TOML"),
])
def test_bad_space_file_is_a_usage_error_naming_the_key(tmp_path, keras3_model, labelled_npz, text, key):
    space = tmp_path / "space.toml"
    space.write_text(text + "\n")
    res = CliRunner().invoke(main, ["tune", str(keras3_model), "-o", str(tmp_path / "t"), "--eval-data",
                                    str(labelled_npz), "--space", str(space)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and key in lines[0] and str(space) in lines[0]


def test_grid_needs_steps():
    with pytest.raises(UsageError, match="'prune_channels' is a continuous range"):
        parse_space({"prune_channels": {"low": 0.0, "high": 0.5}}).grid_size()


def test_cluster_and_low_rank_knobs_reach_the_convert_request():
    """Issue 13's options are knobs too; their flags build a valid ConvertRequest (0 means off)."""
    from edgepack.request import build_request

    space = parse_space({"cluster": [0, 8], "low_rank": [0, 0.9]})
    assert len(list(space.grid())) == 4
    on = space.to_flags({"cluster": 8, "low_rank": 0.9})
    off = space.to_flags({"cluster": 0, "low_rank": 0})
    assert on["cluster"] == 8 and float(on["low_rank"]) == 0.9
    assert not off.get("cluster") and not off.get("low_rank")
    req = build_request({}, {"model": "m.keras", "output": "out", **on})
    assert req.optimize.cluster == 8 and req.optimize.low_rank_spec is not None


def test_huge_grid_is_refused_by_counting_not_building():
    """Issue 20 item 8: two integer ranges of 10^5 steps are 10^10 points; refused before any is built."""
    import tracemalloc

    from edgepack.tune.space import MAX_GRID_POINTS

    space = parse_space({"epochs": {"low": 1, "high": 100_000, "step": 1},
                         "calibration_samples": {"low": 1, "high": 100_000, "step": 1}}, where="--space big.toml")
    tracemalloc.start()
    with pytest.raises(UsageError, match=f"10,000,000,000 points; edgepack's limit is {MAX_GRID_POINTS:,}"):
        next(space.grid())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_default_space_samples_only_combinations_convert_accepts():
    """Issue 20 item 15: per-tensor with sparsity-preserving or cluster QAT, and QAT with int16x8, are
    never drawn (random sampling and grid alike); the refused combinations are convert's own rule."""
    import optuna

    from edgepack.tune.space import refusal

    space = default_space(keras=True, trainable=True, quantize_modes=("int8", "int16x8"), min_calibration_samples=100)
    grid = list(space.grid())
    full = 1
    for d in space.dimensions:
        full *= d.grid_count()
    assert full == 120 and len(grid) == 87  # 30 int16x8+qat and 3 sparsity+qat+per-tensor points dropped
    assert not [p for p in grid if refusal(space.to_flags(p))]
    assert refusal({"qat": True, "per_tensor": True, "prune": "sparsity:0.5"}) is not None  # the rule bites
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(200):
        trial = study.ask()
        drawn.append(space.suggest(trial))
        study.tell(trial, 0.0)
    assert not [p for p in drawn if refusal(space.to_flags(p))]
    assert any(p.get("per_tensor") for p in drawn) and any(p.get("qat") for p in drawn)
    # fixed options count too: with --qat given to every trial, per_tensor is drawn only where it is free
    clustered = parse_space({"cluster": [0, 8], "per_tensor": [False, True]})
    assert list(clustered.grid({"qat": True})) == [{"cluster": 0, "per_tensor": False}, {"cluster": 0, "per_tensor": True},
                                                   {"cluster": 8}]


@pytest.mark.parametrize("requested, trials, cores, memory, expected, note", [
    (64, 1, 2, 20 << 30, 1, "1 trial to run"),
    (64, 100, 2, 20 << 30, 2, "2 cores"),
    (8, 100, 16, 4 << 30, 2, "4.0 GiB of memory available at 1.5 GiB a worker"),
    (4, 100, 16, 1 << 29, 1, "GiB of memory available"),
    (2, 10, 2, 20 << 30, 2, None),
    (4, 0, 2, 20 << 30, 1, None),  # a finished study: one worker, no note
])
def test_workers_are_capped_by_trials_cores_and_memory(requested, trials, cores, memory, expected, note):
    """Issue 20 item 9: never more workers than trials, cores, or memory at ~1.5 GiB a worker."""
    from edgepack.tune.study import worker_count

    n, said = worker_count(requested, trials, cores=cores, memory=memory)
    assert n == expected
    if note is None:
        assert said is None
    else:
        assert said.startswith(f"--workers {requested}: starting {expected} worker") and note in said
