"""One trial: a real ``convert`` + ``validate`` of one point of the space, measured and judged.

The convert and validate functions are handed in by :mod:`edgepack.api` (the layer above), so a
trial runs exactly what ``edgepack convert`` and ``edgepack validate`` run. Fine-tuning reports its
held-out score after every epoch; the study's pruner may stop the trial there.

A trial ends in one of five states: ``feasible``; ``infeasible`` (the target's flash/RAM/Vela checks,
``--max-bytes`` or ``--max-latency-ms`` failed — recorded with the numbers, never dropped);
``pruned`` (stopped early); ``refused`` (convert refused the combination of options, e.g. QAT with
int16x8 given as fixed options: the space itself samples only combinations convert accepts);
``error`` (the conversion failed: the one-line message is recorded).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import (
    CalibrationError,
    EdgepackError,
    ModelLoadError,
    PackagingError,
    StopRequested,
    TargetConstraintError,
    UsageError,
)
from edgepack.request import Objective
from edgepack.targets import TargetSpec

log = logging.getLogger(__name__)

FEASIBLE, INFEASIBLE, PRUNED, ERROR = "feasible", "infeasible", "pruned", "error"
REFUSED = "refused"  # convert refused the options together: not a failure of the conversion


@dataclass
class TrialOutcome:
    status: str
    objective: float | None = None  # percent: accuracy, or agreement with the source model
    metric: str = ""
    bytes: int | None = None  # model.tflite (the Vela model on Ethos-U targets)
    arena_bytes: int | None = None
    vela_sram_bytes: int | None = None
    latency_ms: float | None = None  # LiteRT p50 on this machine, or Vela's estimate on Ethos-U
    latency_source: str = ""
    violations: list[str] = field(default_factory=list)
    constraints: list[float] = field(default_factory=list)  # > 0: by how much (relative) a limit is missed
    reason: str = ""
    seconds: float = 0.0
    bundle: str | None = None
    epochs: list[float] = field(default_factory=list)  # the held-out score after each fine-tuning epoch
    same_as: int | None = None  # the earlier trial with the same settings whose result this is

    @property
    def value(self) -> float:
        """What the study maximises (0 when nothing was measured)."""
        return self.objective if self.objective is not None else 0.0

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    target: TargetSpec
    max_bytes: int | None = None
    max_latency_ms: float | None = None


def _over(needed: float | None, limit: float | None) -> float:
    return 0.0 if needed is None or limit is None else needed / limit - 1.0


def run_trial(*, trial: Any, params: dict[str, Any], flags: dict[str, Any], bundle: Path, eval_data: Path,
              objective: Objective, limits: Limits, convert: Callable[..., Any], validate: Callable[..., Any],
              progress: Callable[[str], None] | None = None) -> TrialOutcome:
    """Convert ``flags`` (the fixed options plus this point's) into ``bundle``, validate it, measure it."""
    start = time.perf_counter()
    out = TrialOutcome(status=FEASIBLE, bundle=str(bundle))
    step = [0]

    def on_epoch(phase: str, epoch: int, metric: str, value: float) -> None:
        score = -value if metric == "teacher_mse" else value
        out.epochs.append(round(score, 4))
        trial.report(score, step[0])
        step[0] += 1
        if trial.should_prune():
            raise StopRequested(f"pruned after {phase} epoch {epoch + 1}: held-out {metric} {value:g}")

    try:
        convert(output=bundle, force=True, progress=progress, on_epoch=on_epoch, **flags)
    except StopRequested as err:
        return _ended(out, PRUNED, str(err), start, bundle)
    except TargetConstraintError as err:
        _from_facts(out, err.facts, limits)
        out.violations = [str(err.message)]
        return _ended(out, INFEASIBLE, err.message, start, bundle)
    except UsageError as err:
        if "--eval-data" in str(err) or "--train-data" in str(err) or "--calibration" in str(err):
            raise  # the user's data, not this point of the space: every trial would fail the same way
        return _ended(out, REFUSED, str(err), start, bundle)
    except (CalibrationError, ModelLoadError, PackagingError):
        raise  # the data, the model or the disk: every trial would fail alike
    except EdgepackError as err:
        return _ended(out, ERROR, str(err), start, bundle)
    if progress:
        progress("validate")
    report = validate(bundle=bundle, data=eval_data, check=False)
    _measure(out, bundle, limits)
    if objective is Objective.ACCURACY:
        if report.accuracy_bundle is None:
            raise UsageError(f"--objective accuracy needs labelled --eval-data {eval_data} (a y array)",
                             hint="add labels, or use --objective agreement")
        out.objective, out.metric = round(report.accuracy_bundle * 100, 4), "accuracy"
    else:
        if report.top1_agreement is None:
            raise UsageError("--objective agreement compares with the source model, which validate could not load",
                             hint="keep the source model where it was converted from")
        out.objective, out.metric = round(report.top1_agreement * 100, 4), "agreement"
    _judge(out, limits)
    out.seconds = round(time.perf_counter() - start, 3)
    if out.violations:
        out.status = INFEASIBLE
        out.reason = "; ".join(out.violations)
    return out


def _ended(out: TrialOutcome, status: str, reason: str, start: float, bundle: Path) -> TrialOutcome:
    out.status, out.reason = status, reason
    out.constraints = out.constraints or [1.0]
    out.seconds = round(time.perf_counter() - start, 3)
    out.bundle = None
    shutil.rmtree(bundle, ignore_errors=True)
    return out


def _from_facts(out: TrialOutcome, facts: Any, limits: Limits) -> None:
    """What a model that failed the target's checks measured (size, arena, Vela SRAM)."""
    if facts is None:
        out.constraints = [1.0]
        return
    spec = limits.target
    out.bytes = facts.vela_size or facts.size
    out.arena_bytes = facts.arena_bytes
    out.vela_sram_bytes = facts.vela_sram_bytes
    needed_flash = max(facts.vela_size or facts.size, facts.vela_flash_bytes or 0)
    cons = [_over(needed_flash, spec.flash_bytes), _over(facts.arena_bytes, spec.ram_bytes),
            _over(facts.vela_sram_bytes, spec.ram_bytes), _over(out.bytes, limits.max_bytes)]
    out.constraints = [c if c > 0 else 0.0 for c in cons]
    if not any(c > 0 for c in out.constraints):  # ops or mode: not a size
        out.constraints.append(1.0)


def _measure(out: TrialOutcome, bundle: Path, limits: Limits) -> None:
    import json

    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    extras = manifest.get("extras", {})
    model = (bundle / "model.tflite").read_bytes()
    out.bytes = len(model)
    out.arena_bytes = extras.get("tflm", {}).get("arena_bytes") if "tflm" in extras else None
    vela = extras.get("vela")
    if vela is not None:
        out.bytes = (bundle / vela["model"]).stat().st_size
        out.vela_sram_bytes = vela.get("sram_bytes")
        out.latency_ms = round(float(vela["inference_seconds"]) * 1000, 4)
        out.latency_source = "vela estimate"
    else:
        from edgepack.optimize.measure import litert_p50_ms

        out.latency_ms = round(litert_p50_ms(model), 4)
        out.latency_source = "litert p50"


def _judge(out: TrialOutcome, limits: Limits) -> None:
    cons = [_over(out.bytes, limits.max_bytes), _over(out.latency_ms, limits.max_latency_ms)]
    if limits.max_bytes is not None and out.bytes is not None and out.bytes > limits.max_bytes:
        out.violations.append(f"{out.bytes} bytes > --max-bytes {limits.max_bytes}")
    if limits.max_latency_ms is not None and out.latency_ms is not None and out.latency_ms > limits.max_latency_ms:
        out.violations.append(f"{out.latency_ms:g} ms ({out.latency_source}) > --max-latency-ms "
                              f"{limits.max_latency_ms:g}")
    out.constraints = [c if c > 0 else 0.0 for c in cons]
