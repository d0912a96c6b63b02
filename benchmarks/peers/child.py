"""Run a peer in a child process under a memory watch: a peer that needs more memory than the machine can
give is a row ("out of memory at N GB"), not the end of the run (onnxruntime's Entropy calibration was
OOM-killed on layout_cdla at 19.5 GB).

Calibration samples go to the child as one ``.npz``: each input's samples concatenated on axis 0
(every sample has a leading batch axis of 1), split again there by :func:`feeds`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ChildResult:
    ok: bool
    seconds: float
    peak_gb: float
    message: str = ""


def save_feeds(feeds: list[dict], path: Path) -> Path:
    np.savez(path, **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    return path


def feeds(path: Path) -> list[dict]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


MACHINE_RESERVE_GB = 1.0  # the machine is shared: a peer never takes its last gigabyte


def run(argv: list[str], limit_gb: float, env: dict | None = None, log: Path | None = None) -> ChildResult:
    """``argv`` in its own process group; killed when its tree's resident memory passes ``limit_gb``, or
    when the machine has less than ``MACHINE_RESERVE_GB`` left (before the kernel's OOM killer picks a
    process, maybe someone else's)."""
    import psutil

    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peak = 0
    try:
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            left = psutil.virtual_memory().available / 2**30
            if peak > limit_gb * 2**30 or left < MACHINE_RESERVE_GB:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                why = f"limit {limit_gb:g} GB" if peak > limit_gb * 2**30 else f"the machine had {left:.1f} GB left"
                return ChildResult(False, time.perf_counter() - start, peak / 2**30,
                                   f"out of memory at {peak / 2**30:.1f} GB ({why})")
            time.sleep(0.25)
    except BaseException:  # interrupted: the child's group goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        if log:
            out.close()
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] if log and log.exists() else []
        return ChildResult(False, secs, peak / 2**30, f"failed (exit {proc.returncode}): {' '.join(tail)[:160]}")
    return ChildResult(True, secs, peak / 2**30)
