"""edgepack.request: the one home of modes and defaults; recipes; the request as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.calibration.preprocess import read_recipe
from edgepack.cli import main
from edgepack.errors import OptionError, UsageError
from edgepack.request import (
    QUANTIZE_MODES,
    ConvertRequest,
    OptimizeOptions,
    QuantizeMode,
    build_request,
)
from edgepack.targets.spec import TargetSpec


def test_mode_names_have_one_home():
    import edgepack.targets.spec as spec

    assert QUANTIZE_MODES == tuple(m.value for m in QuantizeMode)
    assert spec.QUANTIZE_MODES is QUANTIZE_MODES and TargetSpec.__dataclass_fields__["quantize_modes"].default \
        is QUANTIZE_MODES
    cli_choices = next(p for p in main.commands["convert"].params if p.name == "quantize").type.choices
    assert tuple(cli_choices) == QUANTIZE_MODES


def test_cli_defaults_are_the_request_defaults():
    params = {p.name: p.default for p in main.commands["convert"].params}
    req = build_request({}, {"model": "m.keras", "output": "out"})
    assert params["epochs"] == req.optimize.epochs == OptimizeOptions.epochs
    assert params["calibration_samples"] == req.calibration.samples
    assert params["quantize"] == req.quantize.mode.value and params["target"] == req.target


def test_round_trip_through_a_dict():
    req = build_request({}, {"model": "m.onnx", "output": "out", "quantize": "int16x8", "calibration": {"a": "a.npy"},
                             "input_shapes": ["a:1x3x8x8"], "prune": "channels:0.5", "prune_layers": ["conv*"],
                             "onnx2tf_options": {"disable_group_convolution": True}, "seed": 3})
    data = json.loads(json.dumps(req.to_dict()))
    assert ConvertRequest.from_dict(data) == req
    assert data["model"]["input_shapes"] == {"a": [1, 3, 8, 8]} and data["calibration"]["inputs"] == {"a": "a.npy"}


@pytest.mark.parametrize("flags,needle", [
    ({"prune": "channels:1.5"}, "--prune"), ({"prune_norm": "l3"}, "--prune-norm"),
    ({"learning_rate": float("nan")}, "--learning-rate"), ({"epochs": 0}, "--epochs"),
    ({"calibration_samples": 0}, "--calibration-samples"), ({"quantize": "int9"}, "--quantize"),
])
def test_option_checks_live_in_the_request(flags, needle):
    with pytest.raises(OptionError, match=needle):
        build_request({}, {"model": "m.keras", "output": "out", **flags})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_recipe_holds_a_whole_request_and_flags_override(tmp_path):
    recipe = _write(tmp_path / "r.toml", """
model = "model.keras"
target = "cortex-m4"
seed = 7
[quantize]
mode = "int8-float-io"
[calibration]
data = "calib/"
samples = 300
[optimize]
prune = "channels:0.25"
train_data = "train.npz"
[inputs.image]
resize = [96, 96]
""")
    req = build_request(read_recipe(recipe), {"output": "out", "seed": None, "quantize": "int8"}, base=tmp_path)
    assert req.model.path == tmp_path / "model.keras" and req.target == "cortex-m4" and req.seed == 7
    assert req.quantize.mode is QuantizeMode.INT8  # the flag wins
    assert req.calibration.path == tmp_path / "calib/" and req.calibration.samples == 300
    assert req.optimize.prune == "channels:0.25" and req.optimize.train_data == tmp_path / "train.npz"


def test_recipe_per_input_calibration_is_relative_to_the_recipe(tmp_path):
    """``[calibration] inputs = {...}`` paths are the recipe's, like every other path in it (they were
    left relative to the working folder)."""
    recipe = _write(tmp_path / "r.toml", 'model = "m.onnx"\n[calibration]\ninputs = { image = "img.npy" }\n')
    req = build_request(read_recipe(recipe), {"output": "out"}, base=tmp_path)
    assert dict(req.calibration.inputs) == {"image": tmp_path / "img.npy"}


@pytest.mark.parametrize("text,needle", [
    ('bogus = 1\n', "unknown key 'bogus'"),
    ('[optimize]\nprun = "channels:0.5"\n', "unknown key 'optimize.prun'"),
    ('[output]\nforce = true\n', "'output.force' cannot be set in a recipe"),
    ('[quantize]\nmode = "int9"\n', "--quantize"),
])
def test_recipe_mistakes_are_one_line(tmp_path, text, needle):
    recipe = _write(tmp_path / "r.toml", 'model = "m.keras"\n' + text)
    res = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "-o", str(tmp_path / "out")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_preprocessing_only_recipe_still_reads(tmp_path, keras3_model):
    recipe = _write(tmp_path / "pre.toml", "scale = 0.5\n")
    assert build_request(read_recipe(recipe), {"model": "m", "output": "o"}).quantize.mode is QuantizeMode.INT8
    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(out), "--quantize", "none",
                                    "--recipe", str(recipe)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["preprocessing"]["scale"] == 0.5


def test_no_model_or_output_is_a_usage_error(tmp_path):
    for args, needle in ((["convert", "-o", str(tmp_path / "o")], "no model given"),
                         (["convert", "m.keras"], "no output directory given")):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and needle in res.stderr
    with pytest.raises(UsageError):
        build_request({}, {"model": "m.keras"})


def test_the_documented_recipe_parses(tmp_path):
    """The example in edgepack.request's docstring is a working recipe (docs cannot go stale)."""
    import tomllib

    import edgepack.request as request_module

    doc = request_module.__doc__
    block = doc[doc.index("::") + 2:].strip("\n")
    text = "\n".join(line[4:] for line in block.splitlines())
    req = build_request(tomllib.loads(text), {"output": "out"}, base=tmp_path)
    assert req.optimize.prune == "channels:0.5" and req.calibration.samples == 300 and req.target == "cortex-m4"
