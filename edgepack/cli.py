"""The ``edgepack`` command: parse options, call :mod:`edgepack.api`, print, map errors to exit codes.

Human output goes to stdout (tables) and stderr (progress, logs, errors); ``--json`` puts one JSON
document on stdout and nothing else there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from edgepack import __version__
from edgepack import request as R
from edgepack.errors import EdgepackError, UsageError, redact

_OPT = R.OptimizeOptions

RUNTIME_CHOICES = ("litert", "tflite-runtime")


class _RedactingFormatter(logging.Formatter):
    """Log lines (and their tracebacks) with credentials masked: a --storage URL can reach a log line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING + 10 * (quiet - verbose)
    level = max(logging.DEBUG, min(level, logging.CRITICAL))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(levelname)s: %(message)s" if verbose < 2 else
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


def _log_dir() -> Path:
    given = os.environ.get("EDGEPACK_LOG_DIR")
    if given:
        return Path(given)
    folder = Path.home() / ".cache" / "edgepack" / "logs"
    with contextlib.suppress(OSError):  # edgepack's own folders: private, also when an older version made them 0755
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for owned in (folder.parent, folder):
            owned.chmod(0o700)
    return folder


def _write_log(command: str, err: BaseException) -> Path | None:
    """The full traceback of an unexpected failure, in a file the one-line message can point to:
    mode 0600 in a 0700 folder, credentials masked (the argv line may hold a --storage URL)."""
    import traceback

    try:
        folder = _log_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"edgepack-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        text = redact(f"edgepack {__version__} {command}\nargv: {sys.argv!r}\n\n"
                      + "".join(traceback.format_exception(err)))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _fail(command: str, err: BaseException, verbose: int) -> None:
    """One line on stderr (the traceback only with -vv, and in the log file), then exit."""
    from edgepack.errors import InternalError

    internal = not isinstance(err, EdgepackError) or isinstance(err, InternalError)
    if internal and not isinstance(err, EdgepackError):
        err = InternalError(command, err)
    if verbose >= 2:
        logging.getLogger("edgepack").error("details", exc_info=err.__cause__ or err)
    line = f"error: {err}"
    if internal:
        log = _write_log(command, err.__cause__ or err)
        line += f" (full traceback: {log})" if log else ""
    click.echo(redact(" ".join(line.split("\n"))), err=True)
    sys.exit(err.exit_code)


def handle_errors(fn):
    """Turn every failure into one line on stderr and an exit code: the error's own for library
    errors, 1 with a log file for anything unexpected, 130 for Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: int = 0, quiet: int = 0, **kwargs: Any):
        _setup_logging(verbose, quiet)
        try:
            return fn(*args, verbose=verbose, quiet=quiet, **kwargs)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as err:  # the promise is one line, never a traceback, whatever raised
            _fail(fn.__name__, err, verbose)

    return wrapper


class FiniteFloat(click.ParamType):
    """A float that must be finite (``nan`` would switch comparisons off) and within bounds."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min, self.max = min, max

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{value!r} is below the minimum {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{value!r} is above the maximum {self.max:g}", param, ctx)
        return number


# -- --help in sections: one table, option -> section, per command. An option not named here lands in
#    the last section (OTHER_SECTION), and tests/test_cli_help.py lists it so that it gets a home.
OTHER_SECTION = "Other options"
HELP_SECTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "convert": {
        "Quantization": ("--quantize", "--per-tensor", "--ptq", "--no-ptq"),
        "Calibration": ("--calibration", "--calibration-samples", "--preprocess", "--label-column"),
        "ONNX models": ("--input-shape", "--onnx2tf-option", "--input-value"),
        "Recurrent and streaming models": ("--state",),
        "Pruning, clustering, low-rank, QAT and fine-tuning": (
            "--prune", "--prune-norm", "--prune-round", "--prune-group", "--prune-layers", "--keep-layers",
            "--cluster", "--cluster-layers", "--low-rank", "--qat", "--train-data", "--epochs", "--learning-rate",
            "--distill", "--distribute"),
        "Accuracy budget": ("--max-drop", "--metric", "--min-sqnr", "--min-agreement", "--eval-data", "--sqnr-axis",
                            "--keep-best", "--confidence", "--fallback"),
        "Target": ("--target",),
        "App metadata (LiteRT metadata in model.tflite)": ("--metadata", "--model-name", "--description",
                                                           "--model-version", "--author", "--license"),
        "Output and general": ("--output", "--labels", "--force", "--recipe", "--seed", "--trust-model",
                               "--verbose", "--quiet", "--json", "--help"),
    },
    "validate": {
        "Data": ("--data", "--preprocess", "--recipe", "--label-column"),
        "Comparison and pass/fail": ("--reference", "--runtime", "--max-drop", "--metric", "--confidence",
                                     "--trust-model"),
        "Streaming (recurrent models)": ("--stream", "--hop", "--threshold"),
        "Output and general": ("--verbose", "--quiet", "--json", "--help"),
    },
    "tune": {
        "Data": ("--eval-data", "--calibration", "--train-data", "--preprocess", "--epochs"),
        "Search": ("--space", "--trials", "--sampler", "--pruner", "--objective", "--seed"),
        "Target and limits": ("--target", "--max-latency-ms", "--max-bytes"),
        "Study storage and workers": ("--storage", "--study", "--workers"),
        "Output and general": ("--output", "--keep", "--report", "--trust-model", "--verbose", "--quiet", "--json",
                               "--help"),
    },
}


def option_key(param: click.Parameter) -> str:
    """The name an option has in :data:`HELP_SECTIONS`: its long form (``--output`` for ``-o/--output``)."""
    longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    return longs[0] if longs else param.name


def option_sections(command: click.Command, ctx: click.Context) -> dict[str, list[click.Parameter]]:
    """The command's options by section, in the table's order; unassigned ones last, under OTHER_SECTION."""
    table = HELP_SECTIONS.get(command.name or "", {})
    where = {opt: title for title, opts in table.items() for opt in opts}
    sections: dict[str, list[click.Parameter]] = {title: [] for title in table}
    sections[OTHER_SECTION] = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            sections[where.get(option_key(param), OTHER_SECTION)].append(param)
    return sections


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in the sections of :data:`HELP_SECTIONS`
    (parsing is Click's own: only the help text is grouped)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections = option_sections(self, ctx)
        named = [t for t, params in sections.items() if params and t != OTHER_SECTION]
        for title, params in sections.items():
            records = [r for r in (p.get_help_record(ctx) for p in params) if r is not None]
            if records:
                with formatter.section(title if named else "Options"):
                    formatter.write_dl(records)


class EdgepackGroup(click.Group):
    """Click's own usage errors as one line (``error: ...``, exit 2), like edgepack's."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as err:
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(redact(f"error: {' '.join(err.format_message().split())}{where}"), err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except click.ClickException as err:
            click.echo(redact(f"error: {' '.join(err.format_message().split())}"), err=True)
            sys.exit(err.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console(stderr: bool = False):
    from rich.console import Console

    if stderr:  # one stderr console, so data-pass progress bars can nest in the status spinner
        from edgepack import api

        return api.stderr_console()
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def data_option(values: Sequence[str], option: str) -> Path | dict[str, Path] | None:
    """Parse a repeatable data option: one ``PATH``, or ``NAME=PATH`` once per model input."""
    if not values:
        return None
    mapping: dict[str, Path] = {}
    plain: list[str] = []
    for v in values:
        name, sep, path = v.partition("=")
        # a path that exists wins over NAME=PATH parsing (file names may contain '=')
        if sep and name and path and not Path(v).exists():
            if name in mapping:
                raise UsageError(f"{option} {name}=...: input {name!r} given twice")
            mapping[name] = Path(path)
        else:
            plain.append(v)
    if plain and (mapping or len(plain) > 1):
        raise UsageError(f"{option} {plain[-1]}: give one {option} PATH, or {option} NAME=PATH for each model input")
    return mapping or Path(plain[0])


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (on the command line or by environment), not Click's defaults:
    what was not given comes from the recipe, else from edgepack.request's defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k: v for k, v in options.items()
            if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)}


def data_options(fn):
    """--preprocess / --recipe / --label-column, shared by convert and validate."""
    fn = click.option("--label-column", metavar="NAME|INDEX",
                      help="CSV data: the column holding labels (header name or 0-based index).")(fn)
    fn = click.option("--recipe", type=click.Path(path_type=str),
                      help="Recipe file (TOML): a whole convert request and/or preprocessing "
                           "([inputs.NAME] tables per input); options given override it.")(fn)
    fn = click.option("--preprocess", metavar="SPEC",
                      help='How raw data becomes model input, e.g. "resize=96x96,mean=127.5,std=127.5" '
                           "(keys: resize, resize_method, crop, color, scale, mean, std, layout, dtype; "
                           '"none" for model-ready data). Recorded in the manifest.')(fn)
    return fn


_OPTIMIZE_NAMES = ("prune", "prune_norm", "prune_round", "prune_layers", "keep_layers", "cluster", "cluster_layers",
                   "low_rank", "qat", "train_data", "epochs", "distill", "distribute", "learning_rate")


def optimize_options(fn):
    """--prune/--cluster/--low-rank/--qat and their fine-tuning options, handed to the command as one ``optimize`` dict."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        kwargs["optimize"] = {name: kwargs.pop(name) for name in _OPTIMIZE_NAMES}
        return fn(*args, **kwargs)

    opts = [
        click.option("--prune", metavar="channels:R|sparsity:R|M:N",
                     help="channels:0.5 removes half the conv/dense channels (a smaller, faster model); "
                          "sparsity:0.8 zeroes 80% of the weights (smaller zip); 2:4 is m:n sparsity."),
        click.option("--prune-norm", type=click.Choice(R.PRUNE_NORMS), default=_OPT.prune_norm, show_default=True,
                     help="Filter ranking for --prune channels."),
        click.option("--prune-round", type=click.IntRange(min=1), default=_OPT.prune_round, show_default=True,
                     metavar="N",
                     help="--prune channels keeps a multiple of N channels per layer (8 or 16 suit SIMD kernels)."),
        click.option("--prune-group", "prune_groups", multiple=True, metavar="PATTERN=RATIO",
                     help="--prune channels: this ratio for the layers whose name matches PATTERN (fnmatch; "
                          "repeatable, first match wins), e.g. 'conv2d_1=0.25'."),
        click.option("--prune-layers", multiple=True, metavar="PATTERN",
                     help="Only prune layers whose name matches (fnmatch, repeatable)."),
        click.option("--keep-layers", multiple=True, metavar="PATTERN",
                     help="Never prune, cluster or factorize layers whose name matches (fnmatch, repeatable)."),
        click.option("--cluster", type=int, metavar="K",
                     help=f"Weight clustering (tfmot): each conv/dense kernel keeps K shared values "
                          f"({R.MIN_CLUSTERS}-{R.MAX_CLUSTERS}, e.g. 16), fine-tuned on --train-data; the bundle "
                          "zips far smaller. With --qat, cluster-preserving QAT."),
        click.option("--cluster-layers", multiple=True, metavar="PATTERN",
                     help="Only cluster layers whose name matches (fnmatch, repeatable)."),
        click.option("--low-rank", metavar="ENERGY|rank:R",
                     help="Low-rank factorization (SVD) of Dense, 1x1 and kxk Conv2D layers where the pair has "
                          "fewer MACs: 0.9 keeps 90% of each kernel's squared singular values, rank:8 a fixed "
                          "rank; fine-tuned on --train-data."),
        click.option("--qat", is_flag=True, help="Quantization-aware training before int8 conversion."),
        click.option("--train-data", type=click.Path(path_type=str),
                     help="Fine-tuning data: .npz with x (or input names) and, if labelled, y."),
        click.option("--epochs", type=click.IntRange(min=1), default=_OPT.epochs, show_default=True,
                     help="Fine-tuning epochs (early stopping on a held-out 10%)."),
        click.option("--learning-rate", type=FiniteFloat(), metavar="LR",
                     help="Fine-tuning rate (Adam). Default 1e-3 after pruning, 1e-4 for QAT, --cluster and --low-rank."),
        click.option("--distill", is_flag=True, help="Learn the original model's outputs even when labels exist."),
        click.option("--distribute", type=click.Choice(R.DISTRIBUTE),
                     help="Fine-tune under tf.distribute.MirroredStrategy (all GPUs, else all CPU devices)."),
    ]
    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper


@click.group(cls=EdgepackGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepack")
def main() -> None:
    """Turn Keras/ONNX models into validated TFLite (LiteRT) bundles for phones and microcontrollers."""


@main.command(cls=SectionedCommand)
@click.argument("model", type=click.Path(path_type=str), required=False)
@click.option("-o", "--output", type=click.Path(path_type=str), help="Bundle directory to create.")
@click.option("--quantize", type=click.Choice(R.QUANTIZE_MODES), default=R.QuantizeOptions.mode.value,
              show_default=True,
              help="int8: full integer with int8 I/O; uint8: full integer with uint8 (camera) I/O; "
                   "int8-float-io: integer inside, float I/O; "
                   "int16x8: int16 activations; float16; dynamic: int8 weights only; none: float32.")
@click.option("--calibration", multiple=True, metavar="PATH|NAME=PATH",
              help="Representative inputs: .npy (N, *input_shape), .npz keyed by input name, .csv, or a folder "
                   "of JPEG/PNG/BMP images; repeat as NAME=PATH to give each input of a multi-input model its own.")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=R.CalibrationOptions.samples,
              show_default=True,
              help="Samples used for calibration (seeded selection).")
@click.option("--seed", type=int, default=R.ConvertRequest.seed, show_default=True,
              help="Seed for sample selection and fine-tuning.")
@click.option("--target", default=R.ConvertRequest.target, show_default=True,
              help="Target profile (see 'edgepack targets').")
@click.option("--labels", type=click.Path(path_type=str), help="Text file, one class label per line.")
@click.option("--per-tensor", is_flag=True, help="Quantize weights per tensor instead of per channel.")
@click.option("--ptq", "ptq", multiple=True, type=click.Choice([*R.PTQ_ALGORITHMS, "all"]),
              help="Turn on a full-integer PTQ algorithm run before calibration (repeatable): fuse (decomposed "
                   "hard-swish -> HARD_SWISH), equalize (cross-layer equalization), split (depthwise chains cut into "
                   "channel groups, each with its own int8 scale), learned-rounding (AdaRound-style "
                   f"weight rounding), bias-correction, ranges (activation ranges chosen by the int8 model's output "
                   f"error), int8-bias-correction (biases corrected on the int8 model's own activations), "
                   f"lstm-float (a recurrent cell's gates and state kept float; "
                   f"LiteRT targets), stft-magnitude (ONNX sqrt(re^2+im^2) of an STFT conv as a max over rotations; "
                   f"int16x8 and integer-only targets). On by default: {', '.join(R.PTQ_DEFAULT)}.")
@click.option("--no-ptq", "no_ptq", multiple=True, type=click.Choice([*R.PTQ_ALGORITHMS, "all"]),
              help="Turn off a full-integer PTQ algorithm (repeatable).")
@click.option("--trust-model", is_flag=True, help="Allow loading models whose layers run Python code (Lambda).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224",
              help="ONNX: fix an input's dynamic dimensions (repeatable, one per input).")
@click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
              help="ONNX: freeze an input to a constant before translation (repeatable), e.g. sr=16000; Ifs "
                   "that it decides are inlined.")
@click.option("--state", multiple=True, metavar="INPUT=OUTPUT",
              help="A recurrent state pair: OUTPUT feeds INPUT at the next frame (repeatable; found by name "
                   "when not given: state -> stateN, h -> hn).")
@click.option("--onnx2tf-option", "onnx2tf_options", multiple=True, metavar="KEY=VALUE",
              help="ONNX: force an onnx2tf.convert() option instead of the automatic fallbacks (repeatable; "
                   "VALUE as JSON or text), e.g. disable_group_convolution=true.")
@click.option("--max-drop", type=FiniteFloat(min=0, max=100), metavar="PP",
              help="Accuracy budget: top-1 accuracy on labelled --eval-data (or the --metric score) at most PP "
                   "points below the source model's; the search keeps the cheapest candidate that meets it.")
@click.option("--metric", metavar="FILE.py:FUNCTION",
              help="Your task metric for --max-drop (detection F1, string accuracy...): FUNCTION(outputs, "
                   "references, labels) returns a score, 1.0 = perfect. Your code, run in this process.")
@click.option("--min-sqnr", type=FiniteFloat(min=-99, max=199), metavar="DB",
              help="Accuracy budget: SQNR against the source model's outputs of at least DB, per output and per "
                   "slice along its feature axis (the worst slice counts). No labels needed.")
@click.option("--min-agreement", type=FiniteFloat(min=0, max=1), metavar="F",
              help="Accuracy budget: top-1 agreement with the source model of at least F (e.g. 0.99), per output.")
@click.option("--eval-data", multiple=True, metavar="PATH|NAME=PATH",
              help="Data the budget is judged on (any source validate accepts). Default: a seeded held-out part of "
                   "the calibration data that calibration does not use (100 samples, or what the budget needs, up "
                   "to 400; at most half the data).")
@click.option("--sqnr-axis", multiple=True, metavar="NAME:AXIS",
              help="The axis along which output NAME is judged slice by slice (axis 0 = batch; repeatable). "
                   "Default: the smallest non-batch axis of 2..256 elements of a rank>=3 output, "
                   "the last axis of 2..64 of a rank-2 one.")
@click.option("--metadata/--no-metadata", default=None,
              help="Write LiteRT metadata into model.tflite (names, normalization, labels; what MediaPipe Tasks "
                   "and Android Studio read). Default: on.")
@click.option("--model-name", metavar="TEXT", help="Metadata: the model's name (default: the source model's).")
@click.option("--description", metavar="TEXT", help="Metadata: what the model does.")
@click.option("--model-version", metavar="TEXT", help="Metadata: the model's version.")
@click.option("--author", metavar="TEXT", help="Metadata: the model's author.")
@click.option("--license", "license", metavar="TEXT", help="Metadata: the model's license.")
@click.option("--keep-best", is_flag=True,
              help="When no candidate meets the budget, write the best one anyway (\"budget_met\": false).")
@click.option("--confidence", type=FiniteFloat(min=0.5, max=0.999), metavar="LEVEL",
              help="Budgets are met when the bound of this two-sided interval meets them (lower bound of agreement "
                   "and SQNR, upper bound of a drop).  [default: 0.95]")
@click.option("--fallback", type=click.Choice(["float", "int16"]),
              help="Accuracy budget: what the ops int8 cannot carry become. float (default): float ops, the fastest "
                   "on LiteRT's CPU. int16: int16 activations (int16x8), float only for the stretches int16 cannot "
                   "carry: far fewer float ops, for runtimes with fast int16 kernels (LiteRT's CPU runs them on "
                   "reference kernels: 9-71x slower than int8 on the zoo's models). Needs a target that allows int16x8.")
@data_options
@optimize_options
@common_options
@handle_errors
def convert(recipe, verbose, quiet, as_json, optimize=None, **options) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir, .onnx) into a TFLite bundle in OUTPUT.

    --recipe FILE (TOML) can hold the whole request, MODEL and OUTPUT included; options given here
    override it."""
    from edgepack import api

    given = _given({**options, **(optimize or {})})
    if "calibration" in given:
        given["calibration"] = data_option(given["calibration"], "--calibration")
    if "eval_data" in given:
        given["eval_data"] = data_option(given["eval_data"], "--eval-data")

    status = None
    if not as_json and quiet == 0 and sys.stderr.isatty():
        status = _console(stderr=True).status("converting")
        status.start()

    def progress(stage: str) -> None:
        if status is not None:
            status.update(f"converting: {stage}")
        logging.getLogger("edgepack").info("stage: %s", stage)

    try:
        result = api.convert(recipe=recipe, verbose=verbose > 0, progress=progress, **given)
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
        if m.budget is not None:
            for line in api.budget_lines(m.budget):
                click.echo(line)


@main.command(cls=SectionedCommand)
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), required=True,
              help="Folder for the study (study.db), trials.csv, pareto.png and the kept bundles.")
@click.option("--eval-data", type=click.Path(path_type=str),
              help="Held-out data every trial is scored on (.npz with x, and y for --objective accuracy); "
                   "required unless --report.")
@click.option("--target", default=R.ConvertRequest.target, show_default=True, help="Target profile: its limits.")
@click.option("--calibration", multiple=True, metavar="PATH|NAME=PATH", help="Calibration data (as for convert).")
@click.option("--train-data", type=click.Path(path_type=str), help="Fine-tuning data for pruning/QAT trials.")
@click.option("--epochs", type=click.IntRange(min=1), default=_OPT.epochs, show_default=True,
              help="Fine-tuning epochs per trial (the pruner may stop a trial earlier).")
@click.option("--seed", type=int, default=R.ConvertRequest.seed, show_default=True, help="Seed for trials and sampler.")
@click.option("--preprocess", metavar="SPEC", help="How raw data becomes model input (as for convert).")
@click.option("--trust-model", is_flag=True, help="Allow loading models whose layers run Python code (Lambda).")
@click.option("--space", type=click.Path(path_type=str),
              help="Search space (TOML): knobs and their values; default: one for the model and target.")
@click.option("--trials", type=click.IntRange(min=1),
              help=f"Trials in the study (a rerun adds up to this many). Default {R.TuneOptions.DEFAULT_TRIALS}, "
                   "or the whole grid.")
@click.option("--sampler", type=click.Choice([s.value for s in R.Sampler]), default=R.TuneOptions.sampler.value,
              show_default=True, help="grid: every point once; random; tpe: Bayesian.")
@click.option("--pruner", type=click.Choice([p.value for p in R.Pruner]), default=R.TuneOptions.pruner.value,
              show_default=True, help="Stop hopeless trials from their per-epoch fine-tuning score.")
@click.option("--objective", type=click.Choice([o.value for o in R.Objective]),
              default=R.TuneOptions.objective.value, show_default=True,
              help="accuracy on labelled --eval-data, or top-1 agreement with the source model.")
@click.option("--max-latency-ms", type=FiniteFloat(min=0), help="Limit: LiteRT p50 here (Vela's estimate on Ethos-U).")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Limit: model bytes (the Vela model on Ethos-U).")
@click.option("--storage", metavar="URL",
              help="Optuna storage shared by workers and machines, e.g. postgresql://user@host/db. "
                   "Default: sqlite in OUTPUT.")
@click.option("--study", metavar="NAME", help="Study name in the storage. Default: MODEL stem and target.")
@click.option("--workers", type=click.IntRange(min=1), default=R.TuneOptions.workers, show_default=True,
              help="Local worker processes sharing the study.")
@click.option("--keep", type=click.Choice([k.value for k in R.Keep]), default=R.TuneOptions.keep.value,
              show_default=True, help="best: OUTPUT/best; pareto: also every Pareto bundle in OUTPUT/pareto.")
@click.option("--report", is_flag=True, help="Only rebuild trials.csv and pareto.png from the storage.")
@common_options
@handle_errors
def tune(model, output, calibration, verbose, quiet, as_json, report, **options) -> None:
    """Search pruning/quantization settings of MODEL for the most accurate bundle that fits --target.

    Every trial is a real convert + validate. Ctrl-C keeps finished trials; rerunning resumes."""
    from edgepack import api

    given = _given(options)
    if calibration:
        given["calibration"] = data_option(calibration, "--calibration")
    status = None
    if not as_json and quiet == 0 and sys.stderr.isatty():
        status = _console(stderr=True).status("tuning")
        status.start()

    def progress(text: str) -> None:
        if status is not None:
            status.update(f"tuning: {text}")

    def on_trial(line: str) -> None:
        if quiet == 0 and not as_json:
            click.echo(line, err=True)

    try:
        result = api.tune(model=model, output=output, report=report, verbose=verbose > 0, progress=progress,
                          on_trial=on_trial, **{k: v for k, v in given.items()})
    finally:
        if status is not None:
            status.stop()
    if as_json:
        _emit_json(result)
    elif quiet == 0:
        best = result["best_trial"]
        counts = ", ".join(f"{n} {k}" for k, n in sorted(result["counts"].items()))
        click.echo(f"study {result['study']}: {result['trials']} trials ({counts or 'none'}); "
                   f"wrote {result['csv']}, {result['picture']} and {result['report']}")
        if best is None:
            click.echo("no feasible trial yet")
        else:
            where = result.get("best") or result.get("best_elsewhere") or "-"
            click.echo(f"best: trial {best['trial']}, {best['metric']} {best['objective']:.2f}%, {best['bytes']} bytes, "
                       f"{best['latency_ms']} ms: {where}")
    if result["interrupted"]:
        click.echo(f"interrupted: {result['trials']} finished trials are kept in the study; rerun to resume", err=True)
        sys.exit(130)


@main.command(cls=SectionedCommand)
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--data", required=True, multiple=True, metavar="PATH|NAME=PATH",
              help="Labelled data: .npz with x (or input names) and y, a folder with one subfolder of images per "
                   "class, a .csv with --label-column; NAME=PATH per input for multi-input models.")
@click.option("--reference", type=click.Path(path_type=str),
              help="Model to compare against (default: the source recorded in the manifest).")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="litert", show_default=True)
@click.option("--max-drop", type=FiniteFloat(min=0), help="Fail (exit 1) if accuracy (or the --metric score) "
              "drops more than this many percentage points.")
@click.option("--metric", metavar="FILE.py:FUNCTION",
              help="Your task metric, as for convert: FUNCTION(outputs, references, labels) returns a score, "
                   "1.0 = perfect; reported for bundle and reference, and judged by --max-drop.")
@click.option("--trust-model", is_flag=True, help="Allow loading a reference model with Lambda layers.")
@click.option("--confidence", type=FiniteFloat(min=0.5, max=0.999), default=0.95, show_default=True, metavar="LEVEL",
              help="Level of the intervals printed beside each figure; --max-drop fails when the drop's upper "
                   "bound is over it.")
@click.option("--stream", is_flag=True,
              help="Recurrent models: run frame sequences (a WAV folder or an .npz of frames), each runtime and the "
                   "reference carrying its own state; per-frame SQNR and decisions. Default for a bundle with state "
                   "pairs when the data holds no state.")
@click.option("--hop", type=click.IntRange(min=1), help="--stream with WAV files: samples between frames (default: "
                                                        "the frame size; silero: 512 for its 576-sample window).")
@click.option("--threshold", type=FiniteFloat(), default=0.5, show_default=True,
              help="--stream: a one-value output's decision threshold (speech at 0.5).")
@data_options
@common_options
@handle_errors
def validate(bundle, data, reference, runtime, max_drop, metric, trust_model, confidence, stream, hop, threshold,
             preprocess, recipe, label_column, verbose, quiet, as_json) -> None:
    """Run BUNDLE on a device runtime over labelled data and compare with the source model.

    The preprocessing recorded in the bundle's manifest is applied to --data unless --preprocess or
    --recipe is given."""
    from edgepack import api

    if stream or api.wants_stream(bundle=bundle, data=data_option(data, "--data")):
        result = api.validate_stream(bundle=bundle, data=data_option(data, "--data"), reference=reference,
                                     runtime=runtime, threshold=threshold, hop=hop, metric=metric,
                                     trust_model=trust_model, verbose=verbose > 0)
        if as_json:
            _emit_json(result.to_dict())
        elif quiet == 0:
            for line in api.stream_lines(result):
                click.echo(line)
        return
    report = api.validate(bundle=bundle, data=data_option(data, "--data"), reference=reference, runtime=runtime,
                          max_drop=max_drop, trust_model=trust_model, verbose=verbose > 0, check=False,
                          preprocess=preprocess, recipe=recipe, label_column=label_column, metric=metric,
                          confidence=confidence)
    if as_json:
        _emit_json(report.to_dict())
    elif quiet == 0:
        api.render_report(report, _console())
    api.raise_if_failed(report)


@main.command()
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Bundle directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--check", is_flag=True, help="Exit 1 unless the new model.tflite is byte-identical.")
@click.option("--trust-model", is_flag=True, help="Allow a request recorded with --trust-model to load the model "
              "with its code (Lambda layers). The manifest alone never can.")
@click.option("--metric", metavar="FILE.py[:FUNCTION]", help="The task metric file of a request recorded with "
              "--metric; its sha256 must be the recorded one. The manifest alone never runs one.")
@common_options
@handle_errors
def reproduce(bundle, output, force, check, trust_model, metric, verbose, quiet, as_json) -> None:
    """Convert again from the request recorded in BUNDLE into OUTPUT and compare the models.

    Every input file must be unchanged (the manifest holds their sha256). Reports whether the new
    model.tflite is byte-identical and, where not, which tensors differ and by how much."""
    from edgepack import api
    from edgepack.errors import ValidationFailed

    report = api.reproduce(bundle=bundle, output=output, force=force, verbose=verbose > 0, trust_model=trust_model,
                           metric=metric)
    if as_json:
        _emit_json(report)
    elif quiet == 0:
        if report["identical"]:
            click.echo(f"{output}: model.tflite is byte-identical to {bundle}'s ({report['new_bytes']} bytes)")
        else:
            click.echo(f"{output}: model.tflite differs from {bundle}'s ({report['original_bytes']} -> "
                       f"{report['new_bytes']} bytes); {len(report['differences'])} tensors differ")
            for d in report["differences"][:20]:
                by = f", max abs diff {d['max_abs_diff']:.6g}" if d["max_abs_diff"] is not None else ""
                n = f", {d['elements_differing']} elements" if d["elements_differing"] is not None else ""
                click.echo(f"  {d['name']}: {d['what']}{by}{n}")
            if report["other"]:
                click.echo(f"  {report['other']}")
    if check and not report["identical"]:
        raise ValidationFailed(f"{output}: model.tflite is not byte-identical to {bundle}'s")


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--layers", is_flag=True, help="Print the per-layer sensitivity table of a bundle converted with an "
              "accuracy budget (sensitivity.json; the picture is sensitivity.png).")
@common_options
@handle_errors
def inspect(path, layers, verbose, quiet, as_json) -> None:
    """Show a bundle's or a .tflite's inputs, outputs, quantization, ops and sizes."""
    from edgepack import api

    if layers:
        table = api.inspect_layers(path=path)
        if as_json:
            _emit_json(table)
        else:
            for line in api.layer_lines(table):
                click.echo(line)
        return
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
        with_source = any(x.get("source_shape") is not None for x in info[kind])
        for col in ("name", *(("source",) if with_source else ()), "tflite tensor", "shape", "dtype",
                    "scale", "zero point"):
            t.add_column(col)
        for x in info[kind]:
            src = (_source_cell(x),) if with_source else ()
            t.add_row(x["name"], *src, f"{x['tflite_name']} (#{x['index']})", "x".join(map(str, x["shape"])),
                      x["dtype"], "-" if x["scale"] is None else f"{x['scale']:.6g}",
                      "-" if x["zero_point"] is None else str(x["zero_point"]))
        con.print(t)
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    con.print(ops)
    for link in info["state_links"]:
        con.print(f"state: output {link['output']} feeds input {link['input']} on the next call")
    for line in api.metadata_lines(info.get("metadata"), info.get("delegate")):
        con.print(line, markup=False)
    for art in info.get("artifacts", []):
        con.print(f"artifact {art['path']}: {art['bytes']} bytes ({art['role']})")


def _source_cell(x: dict) -> str:
    """The source (ONNX) side of an I/O mapping: "NCHW Nx3x8x8", or the shape alone when the
    TFLite tensor has the same layout."""
    shape = "x".join("?" if d is None else str(d) for d in x["source_shape"])
    return f"{x['source_layout']} {shape}" if x.get("source_layout") else shape


@main.command()
@click.argument("name", required=False)
@click.option("--docs", "docs_path", is_flag=False, flag_value="docs/targets.md", default=None, metavar="[PATH]",
              help="Write the targets document (generated from the profiles and checks) to PATH "
                   "[default: docs/targets.md].")
@common_options
@handle_errors
def targets(name, docs_path, verbose, quiet, as_json) -> None:
    """List target profiles, or show the profile NAME."""
    from edgepack import api

    if docs_path is not None:
        written = api.target_docs(path=docs_path)
        if as_json:
            _emit_json({"docs": str(written)})
        elif quiet == 0:
            click.echo(f"wrote {written}")
        return
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


@main.command()
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Write the page here [default: BUNDLE/report.html, which convert and validate keep up to date].")
@click.option("--force", is_flag=True, help="Replace an existing -o file.")
@common_options
@handle_errors
def report(bundle, output, force, verbose, quiet, as_json) -> None:
    """Write BUNDLE's report.html: one self-contained page (summary, validation, quantization,
    optimization, the model, provenance) from its manifest and validation.json; no model is run."""
    from edgepack import api

    written = api.report(bundle=bundle, output=output, force=force)
    if as_json:
        _emit_json({"report": str(written), "bytes": written.stat().st_size})
    elif quiet == 0:
        click.echo(f"wrote {written} ({written.stat().st_size} bytes)")
