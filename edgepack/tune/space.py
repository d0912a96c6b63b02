"""The search space: data (a TOML file, ``--space``) naming the knobs to search and their values.

Each top-level key is a knob; its value is the list of values to try, or a range table
``{low = 0.0, high = 0.75, step = 0.25}`` (``step`` optional except for grid search; whole-number
bounds make an integer range). ``[prune_groups]`` holds one knob per layer group: an fnmatch
pattern of layer names and the channel ratios to try for it (a width search)::

    quantize = ["int8", "int16x8"]
    per_tensor = [false, true]
    calibration_samples = [100, 200, 400]
    qat = [false, true]
    prune_channels = {low = 0.0, high = 0.5, step = 0.25}

    [prune_groups]
    "conv2d*" = [0.0, 0.25, 0.5]
    "dense" = [0.0, 0.5]

A knob maps its value onto :func:`edgepack.api.convert` options (the fields of
:class:`~edgepack.request.ConvertRequest`); adding a knob is adding an entry to :data:`KNOBS`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.request import QUANTIZE_MODES, OptimizeOptions, parse_prune, valid_ratio

Flags = dict[str, Any]
GROUPS = "prune_groups"
# A grid is counted before any point is built; past this many points it is refused (each point is
# a real convert + validate, seconds to minutes: 10,000 of them is weeks of a machine).
MAX_GRID_POINTS = 10_000
# Knobs sampled only where every value they take is a combination convert accepts (tfmot's
# preserving QAT is per-channel; QAT is for int8): decided after the other knobs, else left at
# convert's default (false) and not a parameter of the trial.
CONDITIONAL = ("qat", "per_tensor")


def _ratio(value: Any) -> str | None:
    return None if isinstance(value, bool) or not isinstance(value, int | float) or valid_ratio(value) \
        else "a ratio in [0, 1)"


def _prune_form(value: Any) -> str | None:
    if value == "none":
        return None
    try:
        parse_prune(str(value))
    except UsageError:
        return '"none" or a --prune form (channels:R, sparsity:R, M:N)'
    return None


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "a whole number >= 1"


def _rate(value: Any) -> str | None:
    return None if isinstance(value, float) and 0 < value < 1 else "a learning rate in (0, 1)"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _mode(value: Any) -> str | None:
    return None if value in QUANTIZE_MODES else f"one of {', '.join(QUANTIZE_MODES)}"


def _clusters(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value == 0 or 2 <= value <= 256)
    return None if ok else "0 (no clustering) or a number of clusters from 2 to 256"


def _energy(value: Any) -> str | None:
    if value == "none" or (isinstance(value, float | int) and not isinstance(value, bool) and 0 <= value <= 1):
        return None
    if isinstance(value, str) and value.startswith("rank:") and value[5:].isdigit() and int(value[5:]) >= 1:
        return None
    return '0 or "none" (no factorization), an energy in (0, 1] or "rank:R"'


def _cluster(flags: Flags, value: int) -> None:
    flags["cluster"] = value or None


def _low_rank(flags: Flags, value: Any) -> None:
    flags["low_rank"] = None if value in (0, "none") else str(value)


def _set(key: str) -> Callable[[Flags, Any], None]:
    def apply(flags: Flags, value: Any) -> None:
        flags[key] = value
    return apply


def _prune(flags: Flags, value: Any) -> None:
    flags["prune"] = None if value == "none" else value


def _channels(flags: Flags, value: float) -> None:
    flags["prune"] = f"channels:{value:g}" if value > 0 else None


def _sparsity(flags: Flags, value: float) -> None:
    if value > 0:
        flags["prune"] = f"sparsity:{value:g}"


def refusal(flags: Mapping[str, Any]) -> str | None:
    """Why convert would refuse these options together (its own rule), or None."""
    from edgepack.pipeline.optimize import combination_problem

    prune = flags.get("prune")
    try:
        sparsity = prune is not None and parse_prune(str(prune)).uses_tfmot
    except UsageError:
        sparsity = False
    err = combination_problem(mode=flags.get("quantize"), qat=bool(flags.get("qat")),
                              per_tensor=bool(flags.get("per_tensor")), sparsity=sparsity, cluster=flags.get("cluster"))
    return None if err is None else err.message


@dataclass(frozen=True)
class Knob:
    """One searchable setting: what a valid value is, and which convert options it sets."""

    check: Callable[[Any], str | None]  # None when valid, else what a valid value is
    apply: Callable[[Flags, Any], None]
    help: str
    prune: bool = False  # sets --prune (at most one such knob per space)
    option: str | None = None  # the OptimizeOptions field it needs (knobs for options newer than this tuner)


KNOBS: dict[str, Knob] = {
    "quantize": Knob(_mode, _set("quantize"), "--quantize mode"),
    "per_tensor": Knob(_bool, _set("per_tensor"), "per-tensor (true) or per-channel (false) weights"),
    "calibration_samples": Knob(_positive_int, _set("calibration_samples"), "calibration samples"),
    "qat": Knob(_bool, _set("qat"), "quantization-aware training"),
    "prune": Knob(_prune_form, _prune, 'a --prune form, or "none"', prune=True),
    "prune_channels": Knob(_ratio, _channels, "global channel-prune ratio", prune=True),
    "sparsity": Knob(_ratio, _sparsity, "weight sparsity (0: none)", prune=True),
    "epochs": Knob(_positive_int, _set("epochs"), "fine-tuning epochs"),
    "learning_rate": Knob(_rate, _set("learning_rate"), "fine-tuning learning rate"),
    "cluster": Knob(_clusters, _cluster, "weight clustering: clusters per kernel (0: none)", option="cluster"),
    "low_rank": Knob(_energy, _low_rank, "low-rank factorization: energy kept or rank:R (0: none)", option="low_rank"),
}


@dataclass(frozen=True)
class Dimension:
    """One knob's values: a list of choices, or a range (``low``..``high``, optional ``step``)."""

    name: str  # the knob, or "prune_groups.PATTERN"
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def grid_count(self) -> int | None:
        """How many values, counted without building them; None for a continuous range."""
        if self.choices is not None:
            return len(self.choices)
        if self.step is None:
            return None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def grid(self) -> tuple[Any, ...] | None:
        """Every value, or None for a continuous range (call after :meth:`SearchSpace.grid_size`)."""
        n = self.grid_count()
        if n is None or self.choices is not None:
            return self.choices
        vals = [self.low + i * self.step for i in range(n)]
        return tuple(int(v) for v in vals) if self.is_int else tuple(round(v, 10) for v in vals)

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step)

    def to_data(self) -> Any:
        if self.choices is not None:
            return list(self.choices)
        return {k: v for k, v in (("low", self.low), ("high", self.high), ("step", self.step)) if v is not None}


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str = "default"  # the file it came from, or "default"

    def _ordered(self) -> list[Dimension]:
        """The conditional knobs last, in :data:`CONDITIONAL` order: they depend on the others."""
        rank = {name: i + 1 for i, name in enumerate(CONDITIONAL)}
        return sorted(self.dimensions, key=lambda d: rank.get(d.name, 0))

    def _free(self, d: Dimension, params: Mapping[str, Any], fixed: Mapping[str, Any] | None) -> bool:
        """Whether every value of conditional knob ``d`` makes a combination convert accepts."""
        return all(refusal({**(fixed or {}), **self.to_flags({**params, d.name: v})}) is None
                   for v in d.choices or ())

    def suggest(self, trial: Any, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """This trial's point; conditional knobs only where all their values are valid with the rest
        (and with ``fixed``, the options every trial shares)."""
        params: dict[str, Any] = {}
        for d in self._ordered():
            if d.name in CONDITIONAL and not self._free(d, params, fixed):
                continue
            params[d.name] = d.suggest(trial)
        return params

    def _valid_point(self, point: Mapping[str, Any], fixed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A grid point as :meth:`suggest` would draw it, or None when it repeats another point (a
        conditional knob that is not free, at a value other than its default)."""
        params: dict[str, Any] = {}
        for d in self._ordered():
            if d.name in CONDITIONAL and not self._free(d, params, fixed):
                if point[d.name]:
                    return None
                continue
            params[d.name] = point[d.name]
        return params

    def to_flags(self, params: Mapping[str, Any]) -> Flags:
        """The :func:`edgepack.api.convert` options one point of the space stands for."""
        flags: Flags = {}
        groups = []
        for name, value in params.items():
            if name.startswith(GROUPS + "."):
                groups.append((name[len(GROUPS) + 1:], value))
            else:
                KNOBS[name].apply(flags, value)
        if groups and any(r > 0 for _, r in groups):
            flags["prune"] = flags.get("prune") or "channels:0"
            flags["prune_groups"] = groups
        return flags

    def grid_size(self) -> int:
        """Points of the full grid, counted arithmetically; refused past :data:`MAX_GRID_POINTS`."""
        total = 1
        for d in self.dimensions:
            n = d.grid_count()
            if n is None:
                raise UsageError(f"--space {self.source}: '{d.name}' is a continuous range; grid search needs "
                                 "every value", hint="give it a step, or a list of values")
            total *= n
        if total > MAX_GRID_POINTS:
            raise UsageError(f"--space {self.source}: --sampler grid over {total:,} points; edgepack's limit is "
                             f"{MAX_GRID_POINTS:,}", hint="give fewer values or a coarser step, or use --sampler tpe")
        return total

    def grid(self, fixed: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every valid point of a discrete space, in a fixed order, one at a time."""
        self.grid_size()
        names = [d.name for d in self.dimensions]
        for combo in itertools.product(*(d.grid() for d in self.dimensions)):
            point = self._valid_point(dict(zip(names, combo)), fixed)
            if point is not None:
                yield point

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.dimensions:
            if d.name.startswith(GROUPS + "."):
                out.setdefault(GROUPS, {})[d.name[len(GROUPS) + 1:]] = d.to_data()
            else:
                out[d.name] = d.to_data()
        return out

    def describe(self) -> str:
        return ", ".join(f"{d.name}={d.to_data()}" for d in self.dimensions)


def _dimension(name: str, value: Any, knob: Knob, where: str) -> Dimension:
    def bad(what: str) -> UsageError:
        return UsageError(f"{where}: '{name}' {what}", hint=f"{name} is the {knob.help}")

    if isinstance(value, list):
        if not value:
            raise bad("has no values")
        for v in value:
            problem = knob.check(v)
            if problem:
                raise bad(f"value {v!r} is not valid (expected {problem})")
        if len(set(map(repr, value))) != len(value):
            raise bad("lists a value twice")
        return Dimension(name, choices=tuple(value))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"low", "high", "step"})
        if unknown or "low" not in value or "high" not in value:
            raise bad("must be a list of values or a range {low = .., high = .., step = ..}"
                      + (f"; unknown key '{unknown[0]}'" if unknown else ""))
        low, high, step = value["low"], value["high"], value.get("step")
        for v in (low, high):
            problem = knob.check(v)
            if problem:
                raise bad(f"bound {v!r} is not valid (expected {problem})")
        if not low < high or (step is not None and (isinstance(step, bool) or not isinstance(step, int | float)
                                                     or step <= 0)):
            raise bad("needs low < high and a positive step")
        if knob.check in (_bool, _mode, _prune_form):
            raise bad("takes a list of values, not a range")
        return Dimension(name, low=low, high=high, step=step)
    raise bad(f"must be a list of values or a range table, not {type(value).__name__}")


def parse_space(data: Mapping[str, Any], where: str = "--space") -> SearchSpace:
    """A :class:`SearchSpace` from TOML data; a :class:`UsageError` naming the key otherwise."""
    dims: list[Dimension] = []
    for name, value in data.items():
        if name == GROUPS:
            if not isinstance(value, Mapping) or not value:
                raise UsageError(f"{where}: '{GROUPS}' must be a table of 'PATTERN = [ratios]'",
                                 hint='e.g. [prune_groups] then "conv2d*" = [0.0, 0.5]')
            group_knob = Knob(_ratio, _channels, "channel-prune ratio for the layers matching the pattern")
            for pattern, values in value.items():
                dims.append(_dimension(f"{GROUPS}.{pattern}", values, group_knob, where))
            continue
        knob = KNOBS.get(name)
        if knob is None:
            raise UsageError(f"{where}: unknown key '{name}'", hint=f"known: {', '.join([*KNOBS, GROUPS])}")
        if knob.option is not None and knob.option not in {f.name for f in dataclasses.fields(OptimizeOptions)}:
            raise UsageError(f"{where}: '{name}' needs convert's --{knob.option.replace('_', '-')}, which this "
                             "edgepack does not have", hint="update edgepack, or drop the key")
        dims.append(_dimension(name, value, knob, where))
    if not dims:
        raise UsageError(f"{where}: the search space is empty", hint=f"give at least one of {', '.join(KNOBS)}")
    pruners = [d.name for d in dims if d.name in KNOBS and KNOBS[d.name].prune]
    if len(pruners) > 1:
        raise UsageError(f"{where}: '{pruners[1]}' and '{pruners[0]}' both set --prune; a trial applies one",
                         hint="keep one of them (prune lists any --prune form)")
    if any(d.name.startswith(GROUPS) for d in dims) and pruners and pruners[0] != "prune_channels":
        raise UsageError(f"{where}: '{GROUPS}' prunes channels and cannot be combined with '{pruners[0]}'",
                         hint="use prune_channels for the other layers")
    return SearchSpace(tuple(dims), source=where.removeprefix("--space "))


def read_space(path: Path) -> SearchSpace:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--space {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--space {path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--space {path}: not valid TOML ({err})") from None
    return parse_space(data, where=f"--space {path}")


def default_space(*, keras: bool, trainable: bool, quantize_modes: tuple[str, ...],
                  min_calibration_samples: int) -> SearchSpace:
    """A sensible space for the model and target: the integer modes the target runs, weight
    granularity, calibration size, and (Keras models with --train-data) pruning and QAT."""
    data: dict[str, Any] = {}
    modes = [m for m in ("int8", "int16x8") if m in quantize_modes]
    if len(modes) > 1:
        data["quantize"] = modes
    data["per_tensor"] = [False, True]
    data["calibration_samples"] = sorted({min_calibration_samples, max(200, min_calibration_samples),
                                          max(500, 2 * min_calibration_samples)})
    if keras and trainable:
        data["prune"] = ["none", "channels:0.25", "channels:0.5", "channels:0.75", "sparsity:0.5"]
        data["qat"] = [False, True]
    return parse_space(data, where="the default space")
