"""Shared helpers for the fault catalogue: run the CLI, assert one-line errors, snapshot bundles,
find leftovers, and build small or read-only file systems where the test may mount them.

Every fault test asserts the same four things: one line on stderr, the exit code, the old bundle
byte-identical (:func:`snapshot`), and no leftovers (:func:`leftovers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

# Names edgepack's atomic writers and converter leave only while they run.
LEFTOVER_PATTERNS = (".*.tmp-*", ".*.old-*", "edgepack-convert-*", "edgepack-tflm-*", "edgepack-run-*")


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[object], *, env: dict[str, str] | None = None, input: str | None = None) -> CliResult:
    """Run ``edgepack ARGS`` in this process (Click's runner); fast, shares the imported TensorFlow.

    An exception that escapes the CLI (what a user would see as a traceback) is put on stderr as
    its traceback, so :func:`one_line` fails on it.
    """
    from click.testing import CliRunner

    from edgepack.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], env=env, input=input)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return CliResult(result.exit_code, result.stdout, stderr)


def run_cli_process(args: Sequence[object], *, env: dict[str, str] | None = None, timeout: float = 300,
                    cwd: Path | None = None) -> CliResult:
    """Run ``python -m edgepack ARGS`` as a child process: native crashes, signals and real stderr."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "edgepack", *(str(a) for a in args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class LimitedResult(NamedTuple):
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, the child's own peak (its waited-for descendants included)
    seconds: float


# The budget every hostile-input case must stay within (issue 20): the child gets an address-space cap
# well above what TensorFlow's import reserves (about 2 GiB of virtual memory), and the test asserts the
# measured peak RSS and wall time.
CASE_RSS = 1 << 30
CASE_SECONDS = 30.0
CASE_ADDRESS_SPACE = 8 << 30


def run_limited(args: Sequence[object], *, env: dict[str, str] | None = None, timeout: float = CASE_SECONDS,
                address_space: int = CASE_ADDRESS_SPACE, cwd: Path | None = None,
                input: str | None = None) -> LimitedResult:
    """Run ``python -m edgepack ARGS`` in a child under ``setrlimit(RLIMIT_AS)`` and a wall-clock
    timeout; return its output with its peak RSS and seconds. A child still running at the
    timeout is killed (its process group) and the test fails there, naming the case."""
    import signal
    import time

    # A fresh wrapper process sets the limit, runs edgepack and reports its own children's peak RSS, so
    # the figure is this case's alone (RUSAGE_CHILDREN of the test process keeps the maximum of every
    # child it ever had).
    wrapper = ("import resource, subprocess, sys\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))\n"
               "rc = subprocess.call([sys.executable, '-m', 'edgepack', *sys.argv[2:]])\n"
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))\n"
               "sys.exit(rc)\n")
    fd, rss_file = tempfile.mkstemp(prefix="edgepack-rss-")
    os.close(fd)
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, rss_file, *(str(a) for a in args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            env=full_env, cwd=cwd, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        os.unlink(rss_file)
        pytest.fail(f"edgepack {' '.join(map(str, args))} ran past {timeout:.0f} s")
    seconds = time.monotonic() - start
    text = Path(rss_file).read_text()
    os.unlink(rss_file)
    peak = int(text) if text else 0
    return LimitedResult(proc.returncode, out, err, peak, seconds)


def assert_contained(result: LimitedResult, code: int, *fragments: str) -> str:
    """A hostile-input case's outcome: exit ``code``, one error line with ``fragments``, within
    :data:`CASE_RSS` and :data:`CASE_SECONDS`."""
    line = assert_error(CliResult(result.code, result.stdout, result.stderr), code, *fragments)
    assert result.peak_rss <= CASE_RSS, f"peak RSS {result.peak_rss / 2**20:.0f} MiB > {CASE_RSS / 2**20:.0f} MiB"
    assert result.seconds <= CASE_SECONDS, f"{result.seconds:.1f} s > {CASE_SECONDS:.0f} s"
    return line


def one_line(stderr: str, *fragments: str) -> str:
    """Assert ``stderr`` is exactly one ``error: ...`` line holding every fragment; return it."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in {line!r}"
    return line


def assert_error(result: CliResult, code: int, *fragments: str) -> str:
    """The usual fault outcome: exit ``code`` and one error line with ``fragments``."""
    assert result.code == code, f"exit {result.code}, expected {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return one_line(result.stderr, *fragments)


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (directories as ``"<dir>"``)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(*folders: Path) -> list[str]:
    """Staging, backup and temp folders of edgepack's own found in ``folders``."""
    found = []
    for folder in folders:
        for pattern in LEFTOVER_PATTERNS:
            found += [str(p) for p in Path(folder).glob(pattern)]
    return sorted(found)


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch) -> Path:
    """A temp dir of this test's own (TMPDIR and :mod:`tempfile`), so leftovers there are ours."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def bundle_copy(int8_bundle, tmp_path) -> Path:
    """A private copy of the session's tiny int8 bundle, free to corrupt (in ``tmp_path/out``)."""
    dest = tmp_path / "out" / "bundle"
    dest.parent.mkdir()
    shutil.copytree(int8_bundle, dest)
    return dest


def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_fs(size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` (root only; the caller falls back or skips when :func:`can_mount` is False)."""
    mnt = Path(tempfile.gettempdir()) / f"edgepack-faults-fs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for everyone, root included: a read-only bind mount over it as
    root (root ignores permission bits), else ``chmod a-w``."""
    if can_mount():
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(mode)
