"""Run a peer in a child process under a memory watch: a peer that needs more memory than the machine can
give is a row ("out of memory at N GB"), not the end of the run (onnxruntime's Entropy calibration was
OOM-killed on layout_cdla at 19.5 GB).

Calibration samples go to the child as one ``.npz``: each input's samples concatenated on axis 0
(every sample has a leading batch axis of 1), split again there by :func:`feeds`.
"""

from __future__ import annotations

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


def run(argv: list[str], limit_gb: float, env: dict | None = None, log: Path | None = None) -> ChildResult:
    """``argv`` in its own process group; killed when its tree's resident memory passes ``limit_gb``."""
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peak = 0
    try:
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            if peak > limit_gb * 2**30:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return ChildResult(False, time.perf_counter() - start, peak / 2**30,
                                   f"out of memory at {peak / 2**30:.1f} GB (limit {limit_gb:g} GB)")
            time.sleep(0.25)
    finally:
        if log:
            out.close()
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] if log and log.exists() else []
        return ChildResult(False, secs, peak / 2**30, f"failed (exit {proc.returncode}): {' '.join(tail)[:160]}")
    return ChildResult(True, secs, peak / 2**30)
