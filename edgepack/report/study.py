"""A tune study's ``report.html``: the Pareto fronts, every trial (a sortable table), Optuna's parameter
importances, the infeasible trials and why, and a link to the best bundle. Built from plain data the
tune package reads from the study's storage (``edgepack tune --report`` rebuilds it from that alone)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgepack.report.figures import data_uri
from edgepack.report.page import render, write_atomic

REPORT_NAME = "report.html"


def write_study_report(path: Path, *, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                       best: Mapping[str, Any] | None, importances: Mapping[str, float] | None,
                       infeasible: Sequence[Mapping[str, Any]], counts: Mapping[str, int],
                       picture: bytes | None, best_link: str | None, notes: Sequence[str] = ()) -> Path:
    """``rows``: one per trial, cells in ``columns`` order; ``picture``: the Pareto PNG, inlined."""
    import edgepack

    top = max(importances.values(), default=0.0) if importances else 0.0
    ranked = [{"name": k, "value": v, "width": v / top if top else 0.0}
              for k, v in sorted((importances or {}).items(), key=lambda kv: -kv[1])]
    html = render("study.html.j2", edgepack_version=edgepack.__version__, title=title, columns=list(columns),
                  rows=[list(r) for r in rows], best=best, importances=ranked, infeasible=list(infeasible),
                  counts=dict(counts), picture=data_uri(picture, "image/png") if picture else None,
                  best_link=best_link, notes=list(notes))
    return write_atomic(path, html)
