"""``edgepack tune`` from start to end: open the study, top up the budget, run the workers, report.

Ctrl-C stops the workers; the trials that finished stay in the storage, the report and the best
bundle are still written, and running the same command again resumes the study.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepack.tune.report import CSV_NAME, PNG_NAME, collect, keep_bundles, kept_paths, write_csv, write_page, write_picture
from edgepack.tune.study import (
    TuneJob,
    available_memory,
    load_study,
    run_workers,
    top_up,
    usable_cores,
    work,
    worker_count,
)
from edgepack.tune.trial import TrialOutcome

log = logging.getLogger(__name__)


@dataclass
class Ticker:
    """Counts finished trials of this run and estimates the time left."""

    total: int  # trials this run has to finish
    workers: int
    start: float = field(default_factory=time.monotonic)
    done: int = 0

    def eta_seconds(self) -> float | None:
        if self.done == 0:
            return None
        per_trial = (time.monotonic() - self.start) / self.done
        return per_trial * max(0, self.total - self.done)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _limits(job: TuneJob) -> dict[str, float | None]:
    from edgepack.targets import load_target

    flash = load_target(job.target).flash_bytes
    sizes = [v for v in (job.options.max_bytes, flash) if v is not None]
    return {"bytes": min(sizes) if sizes else None, "latency_ms": job.options.max_latency_ms}


def run_tune(job: TuneJob, *, convert: Callable[..., Any], validate: Callable[..., Any], verbose: bool = False,
             report_only: bool = False, progress: Callable[[str], None] | None = None,
             on_trial: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or with ``report_only`` just report) the study; ``progress`` hears "trial N k/M, ETA: stage"
    updates, ``on_trial`` one line per finished trial."""
    if not report_only:
        job.output.mkdir(parents=True, exist_ok=True)
    study = load_study(job, create=not report_only)
    job.output.mkdir(parents=True, exist_ok=True)
    interrupted, ran = False, 0
    if not report_only:
        ran, interrupted = _run_trials(job, study, convert, validate, verbose, progress, on_trial)
    summary = collect(study)
    if report_only:  # bundles are the running study's business: only say where the best one is
        where = kept_paths(job.output, summary).get(summary.best.number) if summary.best is not None else None
        kept = {"best": where} if where else {}
    else:
        kept = keep_bundles(summary, job.output, pareto=job.options.keep.value == "pareto")
    csv_path = write_csv(summary, job.output / CSV_NAME)
    title = f"{job.model.name} for {job.target}: {len(summary.rows)} trials, study {job.study}"
    png_path = write_picture(summary, job.output / PNG_NAME, title, limits=_limits(job))
    html_path = write_page(summary, study, job.output, title, png_path)
    best = summary.best
    return {
        "study": job.study, "storage": job.storage.split("@")[-1], "trials": len(summary.rows),
        "ran_here": ran, "counts": summary.counts(), "interrupted": interrupted,
        "csv": str(csv_path), "picture": str(png_path), "report": str(html_path), **kept,
        "best_trial": None if best is None else {
            "trial": best.number, "params": best.params, "objective": best.get("objective"),
            "metric": best.get("metric"), "bytes": best.get("bytes"), "latency_ms": best.get("latency_ms"),
            "arena_bytes": best.get("arena_bytes")},
        "pareto": [r.number for r in summary.rows if r.pareto],
    }


def _run_trials(job: TuneJob, study, convert: Callable[..., Any], validate: Callable[..., Any], verbose: bool,
                progress: Callable[[str], None] | None, on_trial: Callable[[str], None] | None) -> tuple[int, bool]:
    """Top the study up to its budget and run the trials here (one worker) or in worker processes:
    ``(trials run here, interrupted)``."""
    interrupted, ran = False, 0
    left = top_up(study, job)
    workers, note = worker_count(job.options.workers, left, cores=usable_cores(), memory=available_memory())
    if note:
        log.warning("%s", note)
    if workers != job.options.workers:
        job = dataclasses.replace(job, options=dataclasses.replace(job.options, workers=workers))
    ticker = Ticker(left, job.options.workers)
    log.info("study %s: %d trials to run (budget %d) with %d worker(s)", job.study, left, job.budget,
             job.options.workers)

    def stage(number: int, name: str) -> None:
        if progress:
            progress(f"trial {number} ({ticker.done}/{ticker.total} done, ETA {fmt_seconds(ticker.eta_seconds())})"
                     f": {name}")

    def finished(number: int, out: TrialOutcome) -> None:
        from edgepack.tune.study import describe

        ticker.done += 1
        if on_trial:
            on_trial(f"trial {number} [{ticker.done}/{ticker.total}, ETA {fmt_seconds(ticker.eta_seconds())}] "
                     f"{out.status}: {describe(out)}")

    def poll() -> None:
        from optuna.trial import TrialState

        if progress:
            ticker.done = left - len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,
                                                                              TrialState.RUNNING)))
            progress(f"{ticker.done}/{ticker.total} trials done, ETA {fmt_seconds(ticker.eta_seconds())} "
                     f"({job.options.workers} workers)")

    try:
        if job.options.workers == 1:
            ran = work(job, 0, convert, validate, progress=stage, finished=finished)
        else:
            run_workers(job, job.options.workers, convert, validate, verbose, poll=poll)
    except KeyboardInterrupt:
        interrupted = True
    return ran, interrupted
