"""Constraint checks a model must pass for a target.

Each check returns ``(ok, detail)``. Its docstring is the rule as the user reads it: it is printed
by ``edgepack targets NAME`` and written into ``docs/targets.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from edgepack.errors import TargetConstraintError
from edgepack.targets.spec import TargetSpec


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know about a produced model."""

    mode: str
    size: int
    op_counts: dict[str, int]
    arena_bytes: int | None = None
    # Ethos-U targets: the Vela-compiled model (what the device runs) and the memory Vela reports
    vela_size: int | None = None
    vela_flash_bytes: int | None = None
    vela_sram_bytes: int | None = None
    # phone targets: the measured delegate coverage (edgepack.runtimes.delegate)
    delegate: dict | None = None


Check = Callable[[TargetSpec, ModelFacts], "tuple[bool, str]"]


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def check_quantize_mode(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """The model's quantization mode is one the target runs."""
    if facts.mode in spec.quantize_modes:
        return True, f"mode {facts.mode}"
    return False, (f"mode {facts.mode} is not supported by target {spec.name} "
                   f"(supported: {', '.join(spec.quantize_modes)})")


def check_ops(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """Every operator in the model is one the target's runtime provides."""
    if spec.ops is None:
        return True, f"{len(facts.op_counts)} op types (runtime has all builtin ops)"
    missing = {op: n for op, n in facts.op_counts.items() if op not in spec.ops}
    if not missing:
        return True, f"{len(facts.op_counts)} op types, all supported"
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(missing.items()))
    return False, f"ops not supported by {spec.runtime} on target {spec.name}: {listed}"


def _budget(spec: TargetSpec, label: str, needed: int, budget: int | None, kind: str,
            over: str) -> tuple[bool, str]:
    """One budget comparison: ``needed`` bytes against the target's ``kind`` (flash/RAM) budget."""
    if budget is None:
        return True, f"{label} {_kib(needed)} (no {kind} limit)"
    if needed <= budget:
        return True, f"{label} {_kib(needed)} <= {kind} budget {_kib(budget)}"
    return False, f"{over}, over target {spec.name}'s {kind} budget of {budget} bytes ({_kib(budget)})"


def check_flash(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """The model fits the target's flash (storage) budget. On Ethos-U targets the device flashes the
    Vela-compiled model instead, so vela_flash below gates that one."""
    if spec.vela and spec.flash_bytes is not None:
        return True, f"plain model {_kib(facts.size)}; flash is checked on the Vela model"
    return _budget(spec, "model", facts.size, spec.flash_bytes, "flash",
                   f"model is {facts.size} bytes ({_kib(facts.size)})")


def check_arena(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """The tensor arena, measured by allocating the model in the target's runtime, fits in RAM."""
    if spec.ram_bytes is None or facts.arena_bytes is None:
        return True, "no RAM limit" if spec.ram_bytes is None else "arena not measured for this runtime"
    return _budget(spec, "arena", facts.arena_bytes, spec.ram_bytes, "RAM",
                   f"tensor arena needs {facts.arena_bytes} bytes ({_kib(facts.arena_bytes)})")


def check_vela_flash(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """Ethos-U targets: the Vela-compiled model, which is what the device runs, fits the flash budget
    (the flash Vela reports, or the Vela model file's size when that is larger)."""
    if facts.vela_size is None:
        return True, "no Vela model for this target"
    needed = max(facts.vela_size, facts.vela_flash_bytes or 0)
    what = "Vela model file" if needed == facts.vela_size else "Vela's reported flash"
    return _budget(spec, "Vela model", needed, spec.flash_bytes, "flash",
                   f"Vela model needs {needed} bytes of flash ({_kib(needed)}, {what})")


def check_vela_sram(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """Ethos-U targets: the SRAM Vela reports for the compiled model (tensor arena and any weights
    it places in SRAM) fits the RAM budget."""
    if facts.vela_sram_bytes is None:
        return True, "no Vela model for this target"
    sram = facts.vela_sram_bytes
    return _budget(spec, "Vela SRAM", sram, spec.ram_bytes, "RAM",
                   f"Vela model needs {sram} bytes of SRAM ({_kib(sram)})")


INTEGER_MODES = ("int8", "uint8", "int8-float-io", "int16x8")


def check_delegate(spec: TargetSpec, facts: ModelFacts) -> tuple[bool, str]:
    """Phone targets: every op of an integer model runs on the target's delegate (XNNPACK), measured by
    applying it as LiteRT does; ops left on LiteRT's CPU kernels (int16x8 on reference kernels, many
    times slower) are a warning, or a failure where the profile sets ``delegate_fallback = "fail"``."""
    cov = facts.delegate
    if cov is None:
        return True, "no delegate coverage measured for this target"
    summary = f"{cov['delegated']} of {cov['nodes']} ops on {cov['delegate']}, {cov['partitions']} partition(s)"
    if facts.mode not in INTEGER_MODES or not cov["cpu_ops"]:
        return True, summary
    groups = Counter((c["op"], c["reason"]) for c in cov["cpu_ops"])
    off = ", ".join(f"{op} x{n} ({reason})" for (op, reason), n in sorted(groups.items()))
    detail = f"{summary}; on CPU kernels: {off}"
    if spec.delegate_fallback == "fail":
        return False, f"{facts.mode} model falls off {cov['delegate']} on target {spec.name}: {detail}"
    return True, f"warning: {detail}"


CHECKS: tuple[Check, ...] = (check_quantize_mode, check_ops, check_flash, check_arena, check_delegate)
# Run after Vela has compiled the model (Ethos-U targets only), before anything is written.
VELA_CHECKS: tuple[Check, ...] = (check_vela_flash, check_vela_sram)


def run_checks(spec: TargetSpec, facts: ModelFacts, checks: tuple[Check, ...] = CHECKS
               ) -> list[tuple[str, bool, str]]:
    """``(check name, ok, detail)`` for every check; raises once, listing every failure."""
    results = [(c.__name__.removeprefix("check_"), *c(spec, facts)) for c in checks]
    failures = [detail for _, ok, detail in results if not ok]
    if failures:
        raise TargetConstraintError("; ".join(failures), facts=facts)
    return results


def describe_checks() -> list[tuple[str, str]]:
    # docstrings wrap over lines; the docs and `edgepack targets` show each rule as one line
    return [(c.__name__.removeprefix("check_"), " ".join((c.__doc__ or "").split()))
            for c in (*CHECKS, *VELA_CHECKS)]
