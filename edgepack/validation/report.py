"""The validation report: collected first, rendered as a table or JSON, stored as validation.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    cosine_similarity: float
    sqnr_db: float | None  # None when the outputs are identical (infinite SQNR)
    # the worst slice along the output's feature axis (edgepack.validation.metrics.feature_axis, or the
    # axis the bundle's accuracy budget used); None = identical
    worst_slice_sqnr_db: float | None = None
    worst_slice: int | None = None
    slice_axis: int | None = None
    exact: bool = False  # the bundle's outputs equal the reference's: sqnr_db is null because it is infinite


@dataclass
class ValidationReport:
    bundle: str
    runtime: str
    data: str
    samples: int
    mode: str
    reference: str | None = None
    accuracy_bundle: float | None = None
    accuracy_reference: float | None = None
    top1_agreement: float | None = None
    outputs: list[OutputComparison] = field(default_factory=list)
    max_drop_pp: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runtimes: dict[str, Any] = field(default_factory=dict)  # extra runtimes (e.g. TFLM) and their results
    # a bundle converted with an accuracy budget: the budget and the same metrics measured on this data
    budget: dict[str, Any] | None = None
    # --metric: the user's task metric on the bundle and the reference ({metric, bundle, reference, drop_pp})
    task_metric: dict[str, Any] | None = None
    # each figure's interval at this confidence (edgepack.validation.intervals): top1_agreement, accuracy_bundle,
    # accuracy_reference, accuracy_drop_pp, task_metric_drop_pp, worst_slice_sqnr_db {output: ...}
    confidence: float = 0.95
    intervals: dict[str, Any] = field(default_factory=dict)
    # labelled data and a class-vector first output: {output, classes, per_class: [[samples, correct]], matrix}
    # (matrix[true][predicted], up to validation.confusion.MAX_MATRIX_CLASSES classes)
    confusion: dict[str, Any] | None = None

    @property
    def accuracy_drop_pp(self) -> float | None:
        if self.accuracy_bundle is None or self.accuracy_reference is None:
            return None
        return round((self.accuracy_reference - self.accuracy_bundle) * 100.0, 4)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_drop_pp"] = self.accuracy_drop_pp
        d["passed"] = self.passed
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def with_interval(text: str, interval: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.930`` → ``0.930 [0.895, 0.954], n=300``: a figure with its interval, when there is one."""
    if not interval:
        return text

    def f(v: float | None) -> str:
        return "inf" if v is None else f"{v:.{digits}f}"

    return f"{text} [{f(interval['low'])}, {f(interval['high'])}], n={interval['n']}"


def render(report: ValidationReport, console) -> None:
    """Print the report as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    head = Table(title=f"edgepack validate · {report.bundle}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("model", f"{report.mode} on {report.runtime}")
    head.add_row("data", f"{report.data} ({report.samples} samples)")
    head.add_row("reference", report.reference or "none")
    iv = report.intervals
    if iv:
        head.add_row("intervals", escape(f"{report.confidence * 100:g}%: figure [low, high], n samples"))
    if report.accuracy_bundle is not None:
        head.add_row("accuracy (bundle)", with_interval(f"{report.accuracy_bundle:.3f}", iv.get("accuracy_bundle")))
    if report.accuracy_reference is not None:
        head.add_row("accuracy (reference)", with_interval(f"{report.accuracy_reference:.3f}",
                                                           iv.get("accuracy_reference")))
    if report.accuracy_drop_pp is not None:
        budget = "" if report.max_drop_pp is None else f" (budget {report.max_drop_pp:g} pp, judged on the upper bound)"
        head.add_row("accuracy drop", with_interval(f"{report.accuracy_drop_pp:.2f}", iv.get("accuracy_drop_pp"), 2)
                     + f" pp{budget}")
    if report.top1_agreement is not None:
        head.add_row("top-1 agreement", with_interval(f"{report.top1_agreement:.3f}", iv.get("top1_agreement")))
    if report.task_metric is not None:
        tm = report.task_metric
        budget = "" if report.max_drop_pp is None else f", budget {report.max_drop_pp:g} pp"
        drop = with_interval(f"{tm['drop_pp']:.2f}", iv.get("task_metric_drop_pp"), 2)
        head.add_row("task metric", f"{tm['bundle']:.4f} (reference {tm['reference']:.4f}, drop {drop} pp"
                                    f"{budget}) {tm['metric']}")
    if report.budget is not None:
        head.add_row("convert's budget", ", ".join(f"{k} {v:g}" for k, v in report.budget["budget"].items())
                     + f": {report.budget['measured']}")
    for name, rt in report.runtimes.items():
        acc = rt.get("accuracy")
        extra = f", max diff vs litert {rt['max_abs_diff_vs_litert']:.4g}" if "max_abs_diff_vs_litert" in rt else ""
        if "top1_agreement_vs_litert" in rt:
            extra += f", top-1 agreement {_pct(rt['top1_agreement_vs_litert'])}"
        if "arena_bytes" in rt:
            extra += f", arena {rt['arena_bytes']} bytes"
        head.add_row(f"{name}", f"accuracy {_pct(acc)}{extra}")
    head.add_row("time", f"{report.seconds:.2f}s")
    console.print(head)
    if report.outputs:
        console.print(_outputs_table(report))
    for note in report.notes:
        console.print(f"note: {note}")
    verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]: " + "; ".join(report.failures)
    console.print(verdict)


def _outputs_table(report: ValidationReport):
    """Each output against the reference: max abs error, cosine, SQNR, the worst slice with its interval."""
    from rich.table import Table

    iv = report.intervals
    t = Table(title="outputs vs reference", title_justify="left")
    for col in ("output", "max abs error", "cosine", "SQNR (dB)", "worst slice SQNR (dB)"):
        t.add_column(col, justify="right" if col != "output" else "left")
    for o in report.outputs:
        sq = "inf" if o.sqnr_db is None else f"{o.sqnr_db:.2f}"
        ws = with_interval("inf" if o.worst_slice_sqnr_db is None else f"{o.worst_slice_sqnr_db:.2f}",
                           iv.get("worst_slice_sqnr_db", {}).get(o.name), 2)
        sq += " (exact)" if o.exact else ""
        if o.slice_axis is not None and o.worst_slice is not None:
            ws += f" (axis {o.slice_axis} #{o.worst_slice})"
        elif o.slice_axis is None:
            ws += " (one slice)"
        t.add_row(o.name, f"{o.max_abs_error:.5g}", f"{o.cosine_similarity:.6f}", sq, ws)
    return t


def finite_or_none(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x
