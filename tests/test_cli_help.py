"""`--help` in sections (edgepack.cli.HELP_SECTIONS) without changing what any option means."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edgepack.cli import HELP_SECTIONS, OTHER_SECTION, main, option_key, option_sections

# convert's options as they stood before the help was grouped: option, destination, a value, what it parses to
CONVERT_OPTIONS = [
    ("--output", "output", ["-o", "out"], "out"),
    ("--quantize", "quantize", ["--quantize", "int8-float-io"], "int8-float-io"),
    ("--calibration", "calibration", ["--calibration", "a.npy", "--calibration", "x=b.npy"], ("a.npy", "x=b.npy")),
    ("--calibration-samples", "calibration_samples", ["--calibration-samples", "17"], 17),
    ("--seed", "seed", ["--seed", "5"], 5),
    ("--target", "target", ["--target", "cortex-m4"], "cortex-m4"),
    ("--labels", "labels", ["--labels", "l.txt"], "l.txt"),
    ("--per-tensor", "per_tensor", ["--per-tensor"], True),
    ("--trust-model", "trust_model", ["--trust-model"], True),
    ("--force", "force", ["--force"], True),
    ("--input-shape", "input_shapes", ["--input-shape", "x:1x3x8x8"], ("x:1x3x8x8",)),
    ("--onnx2tf-option", "onnx2tf_options", ["--onnx2tf-option", "a=1"], ("a=1",)),
    ("--max-drop", "max_drop", ["--max-drop", "1.5"], 1.5),
    ("--metric", "metric", ["--metric", "m.py:f"], "m.py:f"),
    ("--min-sqnr", "min_sqnr", ["--min-sqnr", "30"], 30.0),
    ("--min-agreement", "min_agreement", ["--min-agreement", "0.9"], 0.9),
    ("--eval-data", "eval_data", ["--eval-data", "e.npz"], ("e.npz",)),
    ("--sqnr-axis", "sqnr_axis", ["--sqnr-axis", "y:1"], ("y:1",)),
    ("--keep-best", "keep_best", ["--keep-best"], True),
    ("--preprocess", "preprocess", ["--preprocess", "none"], "none"),
    ("--recipe", "recipe", ["--recipe", "r.toml"], "r.toml"),
    ("--label-column", "label_column", ["--label-column", "2"], "2"),
    ("--prune", "prune", ["--prune", "channels:0.5"], "channels:0.5"),
    ("--prune-norm", "prune_norm", ["--prune-norm", "l2"], "l2"),
    ("--prune-round", "prune_round", ["--prune-round", "8"], 8),
    ("--prune-group", "prune_groups", ["--prune-group", "c*=0.25"], ("c*=0.25",)),
    ("--prune-layers", "prune_layers", ["--prune-layers", "c*"], ("c*",)),
    ("--keep-layers", "keep_layers", ["--keep-layers", "d*"], ("d*",)),
    ("--cluster", "cluster", ["--cluster", "16"], 16),
    ("--cluster-layers", "cluster_layers", ["--cluster-layers", "c*"], ("c*",)),
    ("--low-rank", "low_rank", ["--low-rank", "rank:8"], "rank:8"),
    ("--qat", "qat", ["--qat"], True),
    ("--train-data", "train_data", ["--train-data", "t.npz"], "t.npz"),
    ("--epochs", "epochs", ["--epochs", "3"], 3),
    ("--learning-rate", "learning_rate", ["--learning-rate", "0.01"], 0.01),
    ("--distill", "distill", ["--distill"], True),
    ("--distribute", "distribute", ["--distribute", "mirrored"], "mirrored"),
    ("--verbose", "verbose", ["-vv"], 2),
    ("--quiet", "quiet", ["-q"], 1),
    ("--json", "as_json", ["--json"], True),
    ("--confidence", "confidence", ["--confidence", "0.9"], 0.9),
    ("--fallback", "fallback", ["--fallback", "int16"], "int16"),
]


def _params(name: str) -> dict[str, click.Option]:
    cmd = main.commands[name]
    return {option_key(p): p for p in cmd.get_params(click.Context(cmd)) if isinstance(p, click.Option)}


@pytest.mark.parametrize("option,dest,args,expected", CONVERT_OPTIONS, ids=[o[0] for o in CONVERT_OPTIONS])
def test_every_convert_option_still_parses_to_the_same_value(option, dest, args, expected):
    params = _params("convert")
    assert option in params and params[option].name == dest
    ctx = main.commands["convert"].make_context("convert", list(args))
    assert ctx.params[dest] == expected


@pytest.mark.parametrize("command", sorted(HELP_SECTIONS))
def test_every_option_has_a_named_section(command):
    """A new option must be given a section in edgepack.cli.HELP_SECTIONS (this lists the ones without)."""
    cmd = main.commands[command]
    homeless = [option_key(p) for p in option_sections(cmd, click.Context(cmd))[OTHER_SECTION]]
    assert not homeless, f"{command}: options in no section of HELP_SECTIONS: {', '.join(homeless)}"
    named = {o for opts in HELP_SECTIONS[command].values() for o in opts}
    stale = named - set(_params(command))
    assert not stale, f"{command}: HELP_SECTIONS names options the command does not have: {sorted(stale)}"


def test_convert_help_shows_the_sections_in_order():
    out = CliRunner().invoke(main, ["convert", "--help"], terminal_width=200).output
    titles = [t for t in HELP_SECTIONS["convert"]]
    positions = [out.index(f"\n{t}:\n") for t in titles]
    assert positions == sorted(positions)
    assert "\nOptions:\n" not in out
    # each option under its own section
    for title, opts in HELP_SECTIONS["convert"].items():
        start = out.index(f"\n{title}:\n")
        nxt = [p for p in positions if p > start]
        body = out[start:min(nxt) if nxt else len(out)]
        for opt in opts:
            if opt in _params("convert"):
                assert f" {opt}" in body, f"{opt} not under {title}"


def test_usage_errors_stay_one_line():
    r = CliRunner().invoke(main, ["convert", "m.keras", "--quantize", "int3"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--quantize" in lines[0]
