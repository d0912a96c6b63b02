"""Disk and permission failures, and killed runs: one line, the old bundle byte-identical, and no
staging, backup or temporary folder left behind (or left for long: the next run removes them)."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgepack.packaging.bundle import clean_stale_staging
from tests.faults.conftest import assert_error, can_mount, leftovers, read_only, run_cli, small_fs, snapshot


def _convert(model, out, *extra):
    return run_cli(["convert", model, "-o", out, "--quantize", "none", *extra])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_full_disk_is_one_line_and_keeps_the_old_bundle(keras3_model, int8_bundle, tmp_path, monkeypatch,
                                                        private_tmpdir):
    if can_mount():
        with small_fs("64k") as fs:
            out = fs / "bundle"
            shutil.copytree(int8_bundle, out)
            fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)  # leave no room for the new bundle
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
            finally:
                os.close(fd)
            before = snapshot(out)
            res = _convert(keras3_model, out, "--force")
            assert_error(res, 1, "cannot write", str(out), "No space left on device", "free space")
            assert snapshot(out) == before
            assert leftovers(fs, private_tmpdir) == []
        return
    # without root: the real write path, with the file system's answer replaced by ENOSPC
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    before = snapshot(out)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert_error(_convert(keras3_model, out, "--force"), 1, "No space left on device", "free space")
    assert snapshot(out) == before
    assert leftovers(tmp_path, private_tmpdir) == []


def test_read_only_output_folder(keras3_model, int8_bundle, tmp_path, private_tmpdir):
    parent = tmp_path / "ro"
    shutil.copytree(int8_bundle, parent / "bundle")
    before = snapshot(parent)
    with read_only(parent):
        res = _convert(keras3_model, parent / "bundle", "--force")
    assert_error(res, 1, str(parent), "not writable")
    assert snapshot(parent) == before
    assert leftovers(parent, private_tmpdir) == []


def test_read_only_bundle_folder_leaves_no_backup(keras3_model, int8_bundle, tmp_path, private_tmpdir):
    """The bundle folder itself cannot be moved aside (read-only or a mount point): no .bundle.old-*."""
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    before = snapshot(out)
    with read_only(out):
        res = _convert(keras3_model, out, "--force")
        assert_error(res, 1, "cannot replace the existing bundle", str(out))
        assert snapshot(out) == before
    assert leftovers(tmp_path, private_tmpdir) == []


def test_stale_staging_of_a_dead_run_is_removed(keras3_model, int8_bundle, tmp_path, private_tmpdir):
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    dead, alive = _dead_pid(), os.getpid()
    for name in (f".bundle.tmp-{dead}-abc", f".bundle.old-{dead}-def", f".bundle.tmp-{alive}-ghi"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.tflite").write_bytes(b"partial")
    (private_tmpdir / f"edgepack-run-{dead}-xyz" / "edgepack-convert-1").mkdir(parents=True)
    res = _convert(keras3_model, out, "--force")
    assert res.code == 0, res
    # the dead run's folders are gone; the live process's staging folder is not touched
    assert leftovers(tmp_path, private_tmpdir) == [str(tmp_path / f".bundle.tmp-{alive}-ghi")]


def test_backup_of_a_run_killed_mid_swap_is_restored(int8_bundle, tmp_path):
    """Killed between its two renames, a run leaves the only copy of the old bundle in .old-PID-*/bundle."""
    out = tmp_path / "bundle"
    backup = tmp_path / f".bundle.old-{_dead_pid()}-abc"
    backup.mkdir()
    shutil.copytree(int8_bundle, backup / "bundle")
    before = snapshot(backup / "bundle")
    assert clean_stale_staging(out) == [backup]
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_sigkill_during_convert_is_cleaned_by_the_next_run(keras3_model, int8_bundle, tmp_path, private_tmpdir):
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    before = snapshot(out)
    env = {**os.environ, "TMPDIR": str(private_tmpdir)}
    proc = subprocess.Popen([sys.executable, "-m", "edgepack", "convert", str(keras3_model), "-o", str(out),
                             "--quantize", "none", "--force"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(private_tmpdir.glob("edgepack-run-*/edgepack-convert-*")):  # the TFLite converter is at work
        assert proc.poll() is None and time.monotonic() < deadline, "convert ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(out) == before  # killed before the swap: the old bundle, untouched
    assert leftovers(private_tmpdir), "the kill should have left the run's temporary folder"
    res = _convert(keras3_model, out, "--force")
    assert res.code == 0, res
    assert leftovers(tmp_path, private_tmpdir) == []


@pytest.mark.parametrize("where", ["validation.json"])
def test_validate_into_a_read_only_bundle(int8_bundle, labelled_npz, tmp_path, where):
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    before = snapshot(out)
    with read_only(out):
        res = run_cli(["validate", out, "--data", labelled_npz, "-q"])
    assert_error(res, 1, "cannot write", where)
    assert snapshot(out) == before
    assert leftovers(out) == [] and not list(out.glob(".validation.json.*"))
