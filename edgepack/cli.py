"""The ``edgepack`` command: parse options, call :mod:`edgepack.api`, print, map errors to exit codes.

Human output goes to stdout (tables) and stderr (progress, logs, errors); ``--json`` puts one JSON
document on stdout and nothing else there.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any

import click

from edgepack import __version__
from edgepack.errors import EdgepackError

QUANTIZE_CHOICES = ("int8", "int8-float-io", "int16x8", "float16", "dynamic", "none")
RUNTIME_CHOICES = ("litert", "tflite-runtime")


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING + 10 * (quiet - verbose)
    level = max(logging.DEBUG, min(level, logging.CRITICAL))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose < 2 else
                                           "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgepack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def common_options(fn):
    """-v/-q (counts) and --json, defined once for every command."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(fn)
    fn = click.option("-q", "--quiet", count=True, help="Less output (repeatable).")(fn)
    fn = click.option("-v", "--verbose", count=True, help="More output; -v also shows TensorFlow's log.")(fn)
    return fn


def handle_errors(fn):
    """Turn library errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: int = 0, quiet: int = 0, **kwargs: Any):
        _setup_logging(verbose, quiet)
        try:
            return fn(*args, verbose=verbose, quiet=quiet, **kwargs)
        except EdgepackError as err:
            if verbose >= 2:
                logging.getLogger("edgepack").exception("details")
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepack")
def main() -> None:
    """Turn Keras/ONNX models into validated TFLite (LiteRT) bundles for phones and microcontrollers."""


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Bundle directory to create.")
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default="int8", show_default=True,
              help="int8: full integer with int8 I/O; int8-float-io: integer inside, float I/O; "
                   "int16x8: int16 activations; float16; dynamic: int8 weights only; none: float32.")
@click.option("--calibration", type=click.Path(path_type=str),
              help="Representative inputs: .npy (N, *input_shape) or .npz keyed by input name.")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="Samples used for calibration (seeded selection).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample selection.")
@click.option("--target", default="generic", show_default=True, help="Target profile (see 'edgepack targets').")
@click.option("--labels", type=click.Path(path_type=str), help="Text file, one class label per line.")
@click.option("--per-tensor", is_flag=True, help="Quantize weights per tensor instead of per channel.")
@click.option("--trust-model", is_flag=True, help="Allow loading models whose layers run Python code (Lambda).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@common_options
@handle_errors
def convert(model, output, quantize, calibration, calibration_samples, seed, target, labels, per_tensor,
            trust_model, force, verbose, quiet, as_json) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir, .onnx) into a TFLite bundle in OUTPUT."""
    from edgepack import api

    status = None
    if not as_json and quiet == 0 and sys.stderr.isatty():
        status = _console(stderr=True).status("converting")
        status.start()

    def progress(stage: str) -> None:
        if status is not None:
            status.update(f"converting: {stage}")
        logging.getLogger("edgepack").info("stage: %s", stage)

    try:
        result = api.convert(model=model, output=output, quantize=quantize, calibration=calibration,
                             calibration_samples=calibration_samples, seed=seed, target=target, labels=labels,
                             force=force, trust_model=trust_model, per_tensor=per_tensor, verbose=verbose > 0,
                             progress=progress)
    finally:
        if status is not None:
            status.stop()
    summary = result.summary()
    if as_json:
        _emit_json(summary)
    elif quiet == 0:
        m = result.manifest
        click.echo(f"wrote {summary['bundle']}: {m.quantization.mode} model, {summary['model_bytes']} bytes, "
                   f"target {m.target.name}, {sum(m.ops.values())} ops in {summary['seconds']:.1f}s")


@main.command()
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Labelled data: .npz with x (or input names) and y.")
@click.option("--reference", type=click.Path(path_type=str),
              help="Model to compare against (default: the source recorded in the manifest).")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="litert", show_default=True)
@click.option("--max-drop", type=click.FloatRange(min=0), help="Fail (exit 1) if accuracy drops more "
              "than this many percentage points.")
@click.option("--trust-model", is_flag=True, help="Allow loading a reference model with Lambda layers.")
@common_options
@handle_errors
def validate(bundle, data, reference, runtime, max_drop, trust_model, verbose, quiet, as_json) -> None:
    """Run BUNDLE on a device runtime over labelled data and compare with the source model."""
    from edgepack import api
    from edgepack.validation.report import render
    from edgepack.validation.validate import raise_if_failed

    report = api.validate(bundle=bundle, data=data, reference=reference, runtime=runtime, max_drop=max_drop,
                          trust_model=trust_model, verbose=verbose > 0, check=False)
    if as_json:
        _emit_json(report.to_dict())
    elif quiet == 0:
        render(report, _console())
    raise_if_failed(report)


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@common_options
@handle_errors
def inspect(path, verbose, quiet, as_json) -> None:
    """Show a bundle's or a .tflite's inputs, outputs, quantization, ops and sizes."""
    from edgepack import api

    info = api.inspect(path=path)
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{info['model']}[/bold]: {info['bytes']} bytes, mode {info['mode']}"
              + (f" ({info['granularity']})" if info["granularity"] else ""))
    for kind in ("inputs", "outputs"):
        t = Table(title=kind, title_justify="left")
        for col in ("name", "tflite tensor", "shape", "dtype", "scale", "zero point"):
            t.add_column(col)
        for x in info[kind]:
            t.add_row(x["name"], f"{x['tflite_name']} (#{x['index']})", "x".join(map(str, x["shape"])), x["dtype"],
                      "-" if x["scale"] is None else f"{x['scale']:.6g}",
                      "-" if x["zero_point"] is None else str(x["zero_point"]))
        con.print(t)
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    con.print(ops)
    for art in info.get("artifacts", []):
        con.print(f"artifact {art['path']}: {art['bytes']} bytes ({art['role']})")


@main.command()
@click.argument("name", required=False)
@common_options
@handle_errors
def targets(name, verbose, quiet, as_json) -> None:
    """List target profiles, or show the profile NAME."""
    from edgepack import api

    data = api.target(name) if name else api.targets()
    if as_json:
        _emit_json(data)
        return
    from rich.table import Table

    con = _console()
    if name:
        t = Table(title=f"target {name}", show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in data.items():
            if k != "checks":
                t.add_row(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v))
        con.print(t)
        for check, doc in data["checks"].items():
            con.print(f"check {check}: {doc}")
        return
    t = Table(title="targets", title_justify="left")
    for col in ("name", "runtime", "modes", "description"):
        t.add_column(col)
    for d in data:
        t.add_row(d["name"], d["runtime"], ", ".join(d["quantize_modes"]), d["description"])
    con.print(t)
