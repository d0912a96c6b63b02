"""The study: Optuna storage, sampler and pruner, the trial budget, and the worker loop.

The budget is held in the storage as *waiting* trials: the process that starts a search tops the
study up to ``--trials`` (the grid's points themselves for ``--sampler grid``), and every worker —
local processes (``--workers N``) or other machines sharing ``--storage`` — pops waiting trials until
none are left. Popping is atomic (a file lock among this machine's workers, the row lock on
PostgreSQL), so no trial runs twice and none is lost; a trial interrupted by Ctrl-C is marked failed
and the next run puts it back in the budget.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, UsageError
from edgepack.request import Pruner, Sampler, TuneOptions
from edgepack.tune.space import SearchSpace
from edgepack.tune.trial import ERROR, PRUNED, REFUSED, Limits, TrialOutcome, run_trial

log = logging.getLogger(__name__)

STUDY_DB = "study.db"
TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker needs (picklable: workers are separate processes)."""

    model: Path
    output: Path
    target: str
    flags: tuple[tuple[str, Any], ...]  # the convert options every trial shares (data, epochs, seed...)
    options: TuneOptions
    space: SearchSpace
    storage: str
    study: str
    seed: int = 0

    @functools.cached_property
    def budget(self) -> int:  # cached: a grid's valid points are counted by walking them
        if self.options.sampler is Sampler.GRID:
            points = sum(1 for _ in self.space.grid(dict(self.flags)))
            return min(points, self.options.trials or points)
        return self.options.trials or TuneOptions.DEFAULT_TRIALS


def storage_url(storage: str | None, output: Path) -> str:
    """The Optuna storage URL: ``--storage`` (PostgreSQL through psycopg 3), else SQLite in ``output``."""
    if storage is None:
        return f"sqlite:///{(output / STUDY_DB).resolve()}"
    scheme, sep, rest = storage.partition("://")
    if not sep:
        raise UsageError(f"--storage {storage!r}: not a database URL",
                         hint="e.g. postgresql://user@host:5432/db or sqlite:///path/study.db")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"  # SQLAlchemy's default driver (psycopg2) is not a dependency
    return storage


def open_storage(url: str):
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # workers on one SQLite file wait for each other's writes instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 300}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        shown = url.split("@")[-1] if "@" in url else url  # no password in the message
        raise UsageError(f"--storage {shown}: cannot open the study database ({type(err).__name__}: {first})",
                         hint="check the URL, that the server runs and that the database exists") from err


def make_sampler(sampler: Sampler, seed: int, startup: int):
    import warnings

    import optuna

    if sampler is Sampler.TPE:
        with warnings.catch_warnings():  # constraints, liar and multivariate are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True,
                                              constraints_func=_constraints, multivariate=True, group=True)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every trial comes with its point fixed


def _constraints(trial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_pruner(pruner: Pruner, epochs: int):
    import optuna

    if pruner is Pruner.MEDIAN:
        from edgepack.tune.pruning import FeasibleMedianPruner

        return FeasibleMedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if pruner is Pruner.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _study_attrs(job: TuneJob) -> dict[str, Any]:
    return {"space": job.space.to_data(), "sampler": job.options.sampler.value,
            "objective": job.options.objective.value, "model": job.model.name, "target": job.target}


def load_study(job: TuneJob, worker: int = 0, *, create: bool = False):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs = int(dict(job.flags).get("epochs") or 10)
    kwargs: dict[str, Any] = {"study_name": job.study, "pruner": make_pruner(job.options.pruner, epochs)}
    if not create:
        db = job.storage.removeprefix("sqlite:///")
        if db != job.storage and not Path(db).is_file():  # SQLite would create an empty file
            raise UsageError(f"--study {job.study}: no study database at {db}",
                             hint="run 'edgepack tune' first, or give its --storage URL")
        try:
            study = optuna.load_study(storage=open_storage(job.storage), **kwargs)
        except KeyError:
            raise UsageError(f"--study {job.study}: no such study in {_shown(job.storage)}",
                             hint="run 'edgepack tune' with the same --storage and --study first") from None
    else:
        study = optuna.create_study(direction="maximize", load_if_exists=True, storage=open_storage(job.storage),
                                    **kwargs)
        _check_attrs(study, job)
    # seeded per worker and per run: a resumed or second worker's sampler does not replay the first's draws
    startup = max(3, min(10, job.budget // 4))
    study.sampler = make_sampler(job.options.sampler, job.seed + 7919 * worker + 104729 * len(study.trials), startup)
    return study


def _check_attrs(study, job: TuneJob) -> None:
    attrs = _study_attrs(job)
    if "space" not in study.user_attrs:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        return
    for key in ("space", "sampler", "objective"):
        if json.dumps(study.user_attrs.get(key), sort_keys=True) != json.dumps(attrs[key], sort_keys=True):
            raise UsageError(f"--study {job.study}: the study in {_shown(job.storage)} was made with another "
                             f"{key} ({study.user_attrs.get(key)})",
                             hint="rerun with the same settings to resume it, or give a new --study NAME")


def _shown(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def _point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def top_up(study, job: TuneJob) -> int:
    """Put the budget's missing trials in the queue; returns how many trials are left to run."""
    from optuna.trial import TrialState

    _fail_dead_local(study)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    active = study.get_trials(deepcopy=False, states=live)
    missing = job.budget - len(active)
    if job.options.sampler is Sampler.GRID:
        taken = {_point_key(t.system_attrs.get("fixed_params") or t.params) for t in active}
        points = (p for p in job.space.grid(dict(job.flags)) if _point_key(p) not in taken)
        for p in itertools.islice(points, max(0, missing)):
            study.enqueue_trial(p)
    else:
        for _ in range(max(0, missing)):
            study.enqueue_trial({})
    return len([t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))])


def _fail_dead_local(study) -> None:
    """Trials left running by a worker of this machine that is gone (killed) go back in the budget."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not _alive(pid):
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            log.info("trial %d was left running by a process that is gone; it will run again", t.number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def work(job: TuneJob, worker: int, convert: Callable[..., Any], validate: Callable[..., Any],
         progress: Callable[[int, str], None] | None = None,
         finished: Callable[[int, TrialOutcome], None] | None = None) -> int:
    """Run waiting trials of the study until none are left; returns how many this worker ran."""
    import optuna
    from optuna.trial import TrialState

    from edgepack.targets import load_target

    study = load_study(job, worker)
    limits = Limits(load_target(job.target), job.options.max_bytes, job.options.max_latency_ms)
    flags = {"model": job.model, "target": job.target, **dict(job.flags)}
    bundles = job.output / TRIALS_DIR
    bundles.mkdir(parents=True, exist_ok=True)
    ran = 0
    while True:
        with _pop_lock(job.output):
            trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            return ran
        trial = optuna.Trial(study, trial_id)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("output", str(job.output.resolve()))
        try:
            params = job.space.suggest(trial, fixed=dict(job.flags))
            out = _same_point(study, params, trial.number)
            if out is None:
                out = run_trial(trial=trial, params=params, flags={**flags, **job.space.to_flags(params)},
                                bundle=bundles / f"trial-{trial.number:04d}", eval_data=job.options.eval_data,
                                objective=job.options.objective, limits=limits, convert=convert, validate=validate,
                                progress=(lambda stage, n=trial.number: progress(n, stage)) if progress else None)
        except BaseException:  # Ctrl-C, or the user's data failing every trial alike: not a result
            study.tell(trial, state=TrialState.FAIL)
            raise
        for key, value in out.to_attrs().items():
            trial.set_user_attr(key, value)
        if out.status == PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, out.value)
        ran += 1
        if out.status in (ERROR, REFUSED):
            log.warning("trial %d: %s", trial.number, out.reason)
        if finished:
            finished(trial.number, out)


@contextlib.contextmanager
def _pop_lock(output: Path) -> Iterator[None]:
    """Serialize popping a waiting trial among this machine's workers. Optuna's pop reads WAITING and
    writes RUNNING in one transaction, which is atomic on PostgreSQL (``SELECT ... FOR UPDATE``) but
    not on SQLite: two workers could both read WAITING and run the same trial (seen in the test suite
    on a loaded machine: "Trial#2 has already finished and can not be updated"). Workers on other
    machines share only a PostgreSQL study, where the database's row lock does the same."""
    import fcntl

    with open(output / ".pop.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _same_point(study, params: dict[str, Any], number: int) -> TrialOutcome | None:
    """A finished trial with the very same settings: conversions are reproducible (same request, same
    seed, same bytes), so its result stands for this one instead of running it again. TPE proposes
    the same point again quite often in small categorical spaces."""
    import dataclasses

    from optuna.trial import TrialState

    names = {f.name for f in dataclasses.fields(TrialOutcome)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.params == params and "status" in t.user_attrs \
                and t.user_attrs.get("same_as") is None:
            out = TrialOutcome(**{k: v for k, v in t.user_attrs.items() if k in names})
            out.reason = "; ".join(x for x in (out.reason, f"same settings as trial {t.number}: its result") if x)
            out.seconds, out.bundle, out.same_as = 0.0, None, t.number
            return out
    return None


def worker_main(job: TuneJob, worker: int, convert: Callable[..., Any], validate: Callable[..., Any],
                verbose: bool) -> None:
    """A ``--workers`` child process: quiet TensorFlow, one log line per trial."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=f"worker {worker}: %(message)s")
    from edgepack._native import quiet_tensorflow
    from edgepack.packaging.tempdirs import run_tempdir

    quiet_tensorflow(verbose)

    def finished(number: int, out: TrialOutcome) -> None:
        log.warning("trial %d %s: %s", number, out.status, describe(out))

    try:
        with run_tempdir():
            work(job, worker, convert, validate, finished=finished)
    except KeyboardInterrupt:
        pass
    except EdgepackError as err:
        log.error("error: %s", err)
        raise SystemExit(err.exit_code) from None


def describe(out: TrialOutcome) -> str:
    parts = []
    if out.objective is not None:
        parts.append(f"{out.metric} {out.objective:.2f}%")
    if out.bytes is not None:
        parts.append(f"{out.bytes / 1024:.1f} KiB")
    if out.latency_ms is not None:
        parts.append(f"{out.latency_ms:.3f} ms")
    if out.reason:
        parts.append(out.reason)
    parts.append(f"{out.seconds:.1f}s")
    return ", ".join(parts)


# What one local worker holds: a process that imported TensorFlow peaks at ~0.7 GiB before any work, and a
# tune trial of the tests' tiny Keras model at 0.8 GiB (tests/faults/test_limits.py); real models need more.
WORKER_BYTES = 3 << 29


def available_memory() -> int | None:
    """Bytes this process may still use: the kernel's MemAvailable, lowered by a cgroup limit."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(requested: int, trials: int, *, cores: int, memory: int | None) -> tuple[int, str | None]:
    """How many local workers to start: no more than ``trials`` left to run, the ``cores`` and what
    ``memory`` holds at :data:`WORKER_BYTES` a worker (at least one). A note when that is fewer."""
    n, why = requested, []
    if trials < n:
        n = max(1, trials)
        if trials:  # nothing left to run: one worker finds that out quietly
            why.append(f"{trials} trial{'s' if trials != 1 else ''} to run")
    if cores < n:
        n = max(1, cores)
        why.append(f"{cores} core{'s' if cores != 1 else ''}")
    if memory is not None and memory // WORKER_BYTES < n:
        n = max(1, memory // WORKER_BYTES)
        why.append(f"{memory / 2**30:.1f} GiB of memory available at {WORKER_BYTES / 2**30:.1f} GiB a worker")
    if not why:
        return n, None
    return n, f"--workers {requested}: starting {n} worker{'s' if n != 1 else ''} ({'; '.join(why)})"


def run_workers(job: TuneJob, workers: int, convert: Callable[..., Any], validate: Callable[..., Any],
                verbose: bool, poll: Callable[[], None] | None = None) -> None:
    """``workers`` local processes on the study; ``poll`` runs every second meanwhile (progress)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    procs = [ctx.Process(target=worker_main, args=(job, w, convert, validate, verbose), name=f"tune-worker-{w}")
             for w in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if poll:
                poll()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:  # the children got the same Ctrl-C: each marks its running trial failed
            p.join(timeout=60)
        raise
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    if poll:
        poll()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise EdgepackError(f"{len(bad)} of {workers} tune workers failed (exit codes {bad}); finished trials are "
                            "kept in the study", hint="rerun with --workers 1 to see the error")
