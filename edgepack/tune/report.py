"""What a study found, rebuilt from its storage: ``trials.csv``, ``pareto.png``, the kept bundles.

Every finished trial is a row (interrupted ones are not: they run again). A feasible trial is on the
Pareto front when no other feasible trial is at least as accurate and at least as small (or fast)
and better in one of them. The picture plots accuracy against bytes and against latency, the
front marked, so people can pick from it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.tune.trial import FEASIBLE

log = logging.getLogger(__name__)

CSV_NAME = "trials.csv"
PNG_NAME = "pareto.png"
BEST_DIR = "best"
PARETO_DIR = "pareto"
BEST_JSON = "best.json"
COLUMNS = ("trial", "status", "objective", "metric", "bytes", "arena_bytes", "vela_sram_bytes", "latency_ms",
           "latency_source", "feasible", "pareto", "seconds", "epochs_run", "same_as", "reason", "host", "worker",
           "bundle")


@dataclass
class Row:
    number: int
    status: str
    params: dict[str, Any]
    attrs: dict[str, Any]
    pareto_bytes: bool = False
    pareto_latency: bool = False

    @property
    def feasible(self) -> bool:
        return self.status == FEASIBLE

    def get(self, key: str) -> Any:
        return self.attrs.get(key)

    @property
    def pareto(self) -> bool:
        return self.pareto_bytes or self.pareto_latency


@dataclass
class StudySummary:
    rows: list[Row]
    best: Row | None
    param_names: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def collect(study) -> StudySummary:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        status = t.user_attrs.get("status") or ("pruned" if t.state == TrialState.PRUNED else "error")
        rows.append(Row(t.number, status, dict(t.params), dict(t.user_attrs)))
    rows.sort(key=lambda r: r.number)
    originals = [r for r in rows if r.feasible and r.get("same_as") is None]  # a repeat is its original's point
    for axis, flag in (("bytes", "pareto_bytes"), ("latency_ms", "pareto_latency")):
        for r in pareto_front(originals, axis):
            setattr(r, flag, True)
    feasible = [r for r in originals if r.get("objective") is not None]
    best = max(feasible, key=lambda r: (r.get("objective"), -(r.get("bytes") or 0), -r.number), default=None)
    names = sorted({k for r in rows for k in r.params})
    return StudySummary(rows, best, names)


def pareto_front(rows: list[Row], axis: str) -> list[Row]:
    """Rows no other row beats: at least as accurate and at most as costly on ``axis``, better in one."""
    pts = [r for r in rows if r.get("objective") is not None and r.get(axis) is not None]
    front = []
    for r in pts:
        a, c = r.get("objective"), r.get(axis)
        dominated = any(o is not r and o.get("objective") >= a and o.get(axis) <= c
                        and (o.get("objective") > a or o.get(axis) < c) for o in pts)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.get(axis))


def kept_paths(output: Path, summary: StudySummary) -> dict[int, str]:
    """Where each trial's bundle is now: best/, pareto/trial-N, or another machine's trial folder."""
    out: dict[int, str] = {}
    here = str(output.resolve())
    for r in summary.rows:
        if r.get("bundle") and (r.get("host") != socket.gethostname() or r.get("output") != here):
            out[r.number] = f"{r.get('host')}:{r.get('bundle')}"
        pareto = output / PARETO_DIR / f"trial-{r.number:04d}"
        if pareto.is_dir():
            out[r.number] = str(pareto)
    best = _recorded_best(output / BEST_JSON)
    if best is not None and (output / BEST_DIR).is_dir():
        out[best] = str(output / BEST_DIR)
    return out


def write_csv(summary: StudySummary, path: Path) -> Path:
    kept = kept_paths(path.parent, summary)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([COLUMNS[0], *summary.param_names, *COLUMNS[1:]])
        for r in summary.rows:
            values = {"trial": r.number, "status": r.status, "feasible": r.feasible, "pareto": r.pareto,
                      "epochs_run": len(r.get("epochs") or []), "bundle": kept.get(r.number)}
            cells = [values.get(c, r.get(c)) for c in COLUMNS]
            w.writerow([cells[0], *[r.params.get(p, "") for p in summary.param_names],
                        *["" if v is None else v for v in cells[1:]]])
    tmp.replace(path)
    return path


def write_picture(summary: StudySummary, path: Path, title: str, limits: dict[str, float | None] | None = None) -> Path:
    """``limits``: a dashed line at each axis' limit (``bytes``: --max-bytes or flash, ``latency_ms``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, axis, label, scale in ((axes[0], "bytes", "model size (KiB)", 1 / 1024),
                                   (axes[1], "latency_ms", "latency (ms)", 1.0)):
        measured = [r for r in summary.rows if r.get("objective") is not None and r.get(axis) is not None]
        feas = [r for r in measured if r.feasible]
        infeas = [r for r in measured if not r.feasible]
        if infeas:
            ax.scatter([r.get(axis) * scale for r in infeas], [r.get("objective") for r in infeas], marker="x",
                       color="#777777", label="infeasible")
        if feas:
            ax.scatter([r.get(axis) * scale for r in feas], [r.get("objective") for r in feas], color="#4c72b0",
                       alpha=0.7, label="feasible")
        front = pareto_front(feas, axis)
        if front:
            ax.plot([r.get(axis) * scale for r in front], [r.get("objective") for r in front], "-o", color="#dd5500",
                    label="Pareto front", drawstyle="steps-post")
            for r in front:
                ax.annotate(f"#{r.number}", (r.get(axis) * scale, r.get("objective")), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        limit = (limits or {}).get(axis)
        if limit is not None and measured and limit <= 2 * max(r.get(axis) for r in measured):  # else off scale
            ax.axvline(limit * scale, color="#888888", linestyle="--", linewidth=1, label="limit")
        if summary.best is not None and summary.best.get(axis) is not None:
            ax.scatter([summary.best.get(axis) * scale], [summary.best.get("objective")], marker="*", s=220,
                       color="#c44e52", zorder=5, label=f"best (#{summary.best.number})")
        ax.set_xlabel(label + (" — " + (measured[0].get("latency_source") or "") if axis == "latency_ms"
                               and measured else ""))
        ax.set_ylabel(f"{(measured[0].get('metric') if measured else '') or 'objective'} (%)")
        ax.grid(alpha=0.3)
        if measured:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def keep_bundles(summary: StudySummary, output: Path, pareto: bool) -> dict[str, Any]:
    """Copy the best feasible bundle to ``best/`` (and with ``pareto`` the front to ``pareto/trial-N``),
    then remove this machine's trial bundles: what is kept is in best/ and pareto/."""
    here = output.resolve()
    kept: dict[str, Any] = {"best": None, "pareto": []}
    record = output / BEST_JSON
    best = summary.best
    if best is not None:
        src = _local_bundle(best, here, output)
        if src is not None:
            _replace_dir(src, output / BEST_DIR)
            record.write_text(json.dumps({"trial": best.number, "objective": best.get("objective"),
                                          "bytes": best.get("bytes"), "params": best.params}, indent=2) + "\n")
            kept["best"] = str(output / BEST_DIR)
        elif _recorded_best(record) == best.number:
            kept["best"] = str(output / BEST_DIR)
        else:
            kept["best_elsewhere"] = f"{best.get('host')}:{best.get('bundle')}"
            log.warning("the best trial (#%d) ran on %s; its bundle is %s there", best.number, best.get("host"),
                        best.get("bundle"))
    if pareto:
        folder = output / PARETO_DIR
        front = {r.number: r for r in summary.rows if r.pareto}
        if folder.is_dir():
            for old in folder.iterdir():
                if old.name.startswith("trial-") and int(old.name[6:] or -1) not in front:
                    shutil.rmtree(old, ignore_errors=True)
        for n, r in front.items():
            dest = folder / f"trial-{n:04d}"
            src = _local_bundle(r, here, output)
            if src is not None:
                _replace_dir(src, dest)
            if dest.is_dir():
                kept["pareto"].append(str(dest))
    trials = output / "trials"
    if trials.is_dir():
        shutil.rmtree(trials, ignore_errors=True)
    return kept


def _recorded_best(record: Path) -> int | None:
    try:
        return int(json.loads(record.read_text("utf-8"))["trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _local_bundle(row: Row, here: Path, output: Path) -> Path | None:
    bundle = row.get("bundle")
    if not bundle or row.get("host") != socket.gethostname() or row.get("output") != str(here):
        return None
    path = Path(bundle)
    return path if (path / "manifest.json").is_file() else None


def _replace_dir(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


HTML_NAME = "report.html"


def importances(study) -> dict[str, float] | None:
    """Optuna's parameter importances of the objective; None until they can be estimated."""
    import optuna

    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials, or no knob varied
        log.info("parameter importances not estimable yet: %s", err)
        return None


def write_page(summary: StudySummary, study, output: Path, title: str, picture: Path | None) -> Path:
    """The study's ``report.html`` (edgepack.report.study): the same rows as trials.csv, sortable."""
    from edgepack.report.study import write_study_report

    kept = kept_paths(output, summary)
    columns = ["trial", *summary.param_names, *[c for c in COLUMNS[1:] if c not in ("host", "worker", "same_as")]]
    rows = []
    for r in summary.rows:
        values = {"trial": r.number, "status": r.status, "feasible": r.feasible, "pareto": r.pareto,
                  "epochs_run": len(r.get("epochs") or []), "bundle": kept.get(r.number)}
        rows.append([values.get(c, r.params.get(c, r.get(c))) for c in columns])
    best = summary.best
    best_info = None if best is None else {"trial": best.number, **best.params, "objective": best.get("objective"),
                                           "metric": best.get("metric"), "bytes": best.get("bytes"),
                                           "latency_ms": best.get("latency_ms"), "arena_bytes": best.get("arena_bytes")}
    link = None
    if best is not None and kept.get(best.number) == str(output / BEST_DIR):
        link = f"{BEST_DIR}/report.html" if (output / BEST_DIR / "report.html").is_file() else f"{BEST_DIR}/"
    infeasible = [{"trial": r.number, "status": r.status, "reason": r.get("reason")} for r in summary.rows
                  if not r.feasible]
    png = picture.read_bytes() if picture is not None and picture.is_file() else None
    return write_study_report(output / HTML_NAME, title=title, columns=columns, rows=rows, best=best_info,
                              importances=importances(study), infeasible=infeasible, counts=summary.counts(),
                              picture=png, best_link=link)
