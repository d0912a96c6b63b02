"""Keeping TensorFlow's native log noise off the terminal unless the user asks for it (-v)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


def quiet_tensorflow(verbose: bool, *, preload: bool = True) -> None:
    """Keep TensorFlow's log noise off the terminal unless ``verbose``.

    TF's C++ side logs through absl before any Python setting applies (CUDA plugin registration,
    XLA placer warnings), so unless verbose, TensorFlow is imported here with file descriptors 1
    and 2 captured; later imports are then free of noise.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "keras", "tf_keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if preload and "tensorflow" not in sys.modules:
        with capture_native_output():
            import tensorflow  # noqa: F401


class Captured:
    text: str = ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def capture_native_output(enabled: bool = True) -> Iterator[Captured]:
    """Redirect file descriptors 1 and 2 (C++ and Python prints) into a buffer while active.

    The captured text is available afterwards, so a failure can quote the converter's own words.
    """
    cap = Captured()
    if not enabled:
        yield cap
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield cap
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            cap.text = tmp.read().decode("utf-8", "replace")


@contextlib.contextmanager
def capture_all_output(enabled: bool = True) -> Iterator[Captured]:
    """What a third-party tool prints, all of it: file descriptors 1 and 2 (C++ and whatever reaches
    them) and Python's ``sys.stdout``/``sys.stderr``, which need not be fd 1 (pytest, notebooks).
    ``text`` holds both once the block is left, so a failure can quote the tool's own words."""
    if not enabled:
        yield Captured()
        return
    printed = io.StringIO()
    cap = None
    try:
        with capture_native_output() as cap, contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield cap
    finally:
        if cap is not None:
            cap.text = printed.getvalue() + cap.text
