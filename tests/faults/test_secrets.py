"""Storage passwords never leave the command line (issue 20, items 5 and 6): not in error lines, log
lines, crash logs (0600 in 0700 folders) or anything edgepack writes; a refused ``--storage``
leaves no empty ``-o`` folder behind."""

from __future__ import annotations

import logging
import stat
import sys

import pytest

from edgepack import cli
from edgepack.errors import InternalError, UsageError, redact
from tests.faults.conftest import assert_contained, leftovers, run_limited

SECRET = "S3cretPW"


@pytest.mark.parametrize("text", [
    f"postgresql://alice:{SECRET}@host/db",
    f"postgresql+psycopg://alice:{SECRET}@db.example:5432/optuna?sslmode=require",
    f"postgresql:///db?host=h&user=alice&password={SECRET}",
    f"mysql://u:{SECRET}@x@h/db",  # an unescaped @ in the password
    f"host=db user=alice password={SECRET} dbname=optuna",  # libpq keyword string
    f"host=db password='{SECRET} with space' dbname=optuna",
    f"PGPASSWORD={SECRET} edgepack tune ...",  # environment style
    f"argv: ['edgepack', 'tune', '--storage', 'postgresql://alice:{SECRET}@host/db']",  # a crash log's argv line
    f"sqlite:///x.db?passwd={SECRET}&timeout=3",
    f"postgresql://alice:it's{SECRET}@host/db",  # a quote in the password (SQLAlchemy takes it raw)
    f"argv: ['--storage', 'postgresql://alice:p\"{SECRET}@host/db']",
])
def test_redact_masks_every_credential_form(text):
    out = redact(text)
    assert SECRET not in out and "***" in out, out


def test_redact_keeps_what_is_not_a_credential():
    for text in ("sqlite:////tmp/study.db", "postgresql://alice@host/db", "model.keras: no such file",
                 "--storage postgresql://host/db"):
        assert redact(text) == text


def test_refused_storage_echoes_no_password_and_leaves_no_folder(tmp_path, keras3_model, labelled_npz, calib_npy):
    """Item 6: the exit-2 error echoed ``password=`` in full and left an empty -o folder."""
    out = tmp_path / "study"
    url = f"postgresql:///db?host=127.0.0.1&port=1&user=alice&password={SECRET}"
    result = run_limited(["tune", keras3_model, "-o", out, "--eval-data", labelled_npz, "--calibration", calib_npy,
                          "--storage", url])
    print(f"\nCASE refused --storage: exit {result.code}, {result.peak_rss / 2**20:.0f} MiB, {result.seconds:.1f} s: "
          f"{result.stderr.strip()[:160]}")
    line = assert_contained(result, 2, "--storage", "password=***")
    assert SECRET not in line and SECRET not in result.stdout
    assert not out.exists() and not leftovers(tmp_path)


def test_error_messages_are_redacted_where_they_are_made():
    """What reaches trials.csv (a trial's one-line message) and API callers, not only the CLI's line."""
    err = UsageError(f"--storage postgresql://alice:{SECRET}@h/db: cannot open", hint=f"PGPASSWORD={SECRET}")
    assert SECRET not in str(err) and SECRET not in err.message and SECRET not in err.hint
    crash = InternalError("tune", RuntimeError(f"connect host=h password={SECRET} failed"))
    assert SECRET not in str(crash)


def test_crash_log_is_private_and_redacted(tmp_path, monkeypatch):
    """Item 5: the crash log held ``argv`` verbatim, mode 0644 in 0755 folders."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EDGEPACK_LOG_DIR", raising=False)
    old = tmp_path / ".cache" / "edgepack" / "logs"
    old.mkdir(parents=True, mode=0o755)  # as an older edgepack made it
    old.chmod(0o755)
    monkeypatch.setattr(sys, "argv", ["edgepack", "tune", "m.keras", "--storage", f"postgresql://alice:{SECRET}@h/db"])
    try:
        raise RuntimeError(f"psycopg: connection to postgresql://alice:{SECRET}@h/db failed")
    except RuntimeError as err:
        path = cli._write_log("tune", err)
    assert path is not None and path.parent == old
    text = path.read_text()
    assert SECRET not in text and "argv:" in text and "postgresql://alice:***@h/db" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (old, old.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    chosen = tmp_path / "chosen" / "logs"  # $EDGEPACK_LOG_DIR: created private when edgepack makes it
    monkeypatch.setenv("EDGEPACK_LOG_DIR", str(chosen))
    path = cli._write_log("tune", RuntimeError("x"))
    assert path.parent == chosen and stat.S_IMODE(chosen.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_log_lines_are_redacted(capsys):
    cli._setup_logging(verbose=2, quiet=0)
    try:
        logging.getLogger("edgepack.tune").info("opening %s", f"postgresql://alice:{SECRET}@h/db")
    finally:
        logging.getLogger("edgepack").handlers[:] = []
    err = capsys.readouterr().err
    assert "opening postgresql://alice:***@h/db" in err and SECRET not in err
