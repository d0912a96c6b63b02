"""One temporary folder per run, named with the run's pid, so a killed run's files are found later.

Converters, onnx2tf, Vela and the TFLM probe each make temporary folders (``edgepack-convert-*``,
``edgepack-onnx2tf-*``, ...). A SIGKILL skips their cleanup. During :func:`run_tempdir` they all
live inside ``$TMPDIR/edgepack-run-PID-XXXX``; the next run removes such folders whose pid is dead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgepack.errors import PackagingError
from edgepack.packaging.bundle import pid_alive

log = logging.getLogger(__name__)
RUN_PREFIX = "edgepack-run-"


def clean_stale_runs(base: str | Path | None = None) -> list[Path]:
    """Remove ``edgepack-run-PID-*`` folders in ``base`` (the temp dir) whose run is dead."""
    removed = []
    root = Path(base or tempfile.gettempdir())
    for folder in sorted(root.glob(f"{RUN_PREFIX}*")):
        head = folder.name[len(RUN_PREFIX):].split("-", 1)[0]
        if not head.isdigit() or pid_alive(int(head)) or not folder.is_dir():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            log.info("removed %s, left by a killed run (pid %s)", folder, head)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def run_tempdir() -> Iterator[Path]:
    """Point :mod:`tempfile` at a fresh per-run folder for the duration (removed afterwards).

    Nested use (``validate`` called while a run is active) reuses the outer folder.
    """
    current = tempfile.gettempdir()
    if Path(current).name.startswith(f"{RUN_PREFIX}{os.getpid()}-"):
        yield Path(current)
        return
    clean_stale_runs(current)
    try:
        folder = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-", dir=current)
    except OSError as err:
        raise PackagingError(f"cannot create a temporary folder in {current}: {err.strerror}",
                             hint="set TMPDIR to a writable folder with free space") from err
    saved = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield Path(folder)
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)
