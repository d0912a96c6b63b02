"""Writing bundles atomically: build in a temporary folder beside the output, then rename.

A failure or Ctrl-C at any point leaves no partial bundle and the previous one intact. An
existing output is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgepack.errors import BundleError, PackagingError
from edgepack.packaging.manifest import Artifact

log = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_output(out: Path, force: bool) -> None:
    """Fail before any work is done if ``out`` cannot be written; tidy up after killed runs first."""
    clean_stale_staging(out)
    if out.exists() and not force:
        raise PackagingError(f"output {out} already exists", hint="pass --force to replace it, or choose another -o")
    if out.exists() and not out.is_dir():
        raise PackagingError(f"output {out} exists and is not a directory", hint="choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise PackagingError(f"output folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise PackagingError(f"output folder {parent} is not writable", hint="choose another -o")


def _disk_error(err: OSError, out: Path, doing: str) -> PackagingError:
    """One line for a failed write: what, where, and what the user can do about that errno."""
    why = err.strerror or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space on that disk or choose another -o"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the folder's permissions, or choose another -o"
    else:
        hint = "choose another -o"
    return PackagingError(f"cannot {doing} {out}: {why}", hint=hint)


class BundleWriter:
    """Collects the files of a bundle in a staging folder; :meth:`commit` swaps it into place."""

    def __init__(self, staging: Path, out: Path) -> None:
        self.staging, self.out = staging, out
        self.artifacts: list[Artifact] = []

    def add(self, relpath: str, data: bytes | str, role: str) -> Artifact:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        dest = self.staging / relpath
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(raw)
        except OSError as err:
            raise _disk_error(err, self.out, f"write {relpath} of the bundle") from err
        art = Artifact(path=relpath, role=role, bytes=len(raw), sha256=sha256_bytes(raw))
        self.artifacts.append(art)
        return art

    def write_text(self, relpath: str, text: str) -> None:
        """A file that is not an artifact (the manifest itself)."""
        try:
            (self.staging / relpath).write_text(text, encoding="utf-8")
        except OSError as err:
            raise _disk_error(err, self.out, f"write {relpath} of the bundle") from err


def _staging_prefix(out: Path, kind: str) -> str:
    """``.NAME.tmp-PID-`` / ``.NAME.old-PID-``: the pid lets a later run tell a dead run's folder."""
    return f".{out.name}.{kind}-{os.getpid()}-"


_UNSEEN = (-1, -1)


def output_identity(out: Path) -> tuple[int, int] | None:
    """(device, inode) of the output folder, None when there is none: another run's swap changes it."""
    try:
        st = os.stat(out)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def atomic_bundle(out: Path, *, force: bool, seen: tuple[int, int] | None | object = _UNSEEN) -> Iterator[BundleWriter]:
    """``seen``: the output's :func:`output_identity` when the run began; with ``force`` only that
    output is replaced, not one another run wrote meanwhile (two concurrent ``--force`` runs: one
    writes, the other fails and says so)."""
    if seen is _UNSEEN:
        seen = output_identity(out)
    check_output(out, force)
    out = out.resolve()
    try:
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, "tmp"), dir=out.parent))
    except OSError as err:
        raise _disk_error(err, out, "create a staging folder beside") from err
    try:
        yield (writer := BundleWriter(staging, out))
        with _folder_lock(out.parent):  # one swap at a time beside this output, checked against what we saw
            if force and output_identity(out) != seen:
                raise PackagingError(f"output {out} was replaced by another run while converting; this run's bundle "
                                     "was not written", hint="run again to replace it, or choose another -o")
            _swap_into_place(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    del writer


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file to leave behind); a no-op where unsupported."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _swap_into_place(staging: Path, out: Path, force: bool) -> None:
    old = None
    if out.exists():
        if not force:  # appeared while we worked
            raise PackagingError(f"output {out} appeared while converting", hint="pass --force to replace it")
        try:
            old = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, "old"), dir=out.parent))
            os.rename(out, old / "bundle")
        except OSError as err:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise _disk_error(err, out, "replace the existing bundle") from err
    try:
        os.rename(staging, out)
    except OSError as err:
        if old is not None:
            try:
                os.rename(old / "bundle", out)
            except OSError:  # the backup is now the only copy: say where it is, never delete it
                raise PackagingError(f"cannot move the new bundle into {out} ({err.strerror}), nor the old one back",
                                     hint=f"the old bundle is in {old / 'bundle'}") from err
            shutil.rmtree(old, ignore_errors=True)
        raise _disk_error(err, out, "move the new bundle into") from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _owner(name: str, prefix: str) -> int | None:
    """The pid encoded after ``prefix`` in a staging folder's name, None for other names."""
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove staging and backup folders beside ``out`` left by killed runs (their pid is dead).

    A backup (``.old-``) of a run killed between its two renames holds the only copy of the old
    bundle: it is moved back to ``out`` when ``out`` is missing, never deleted."""
    parent = out.absolute().parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for kind in ("old", "tmp"):  # restore a backup before deciding anything about staging folders
        prefix = f".{out.name}.{kind}-"
        for folder in sorted(parent.glob(f"{glob.escape(prefix)}*")):
            pid = _owner(folder.name, prefix)
            if pid is None:
                log.warning("%s: a staging folder of an earlier edgepack run; remove it if no run is active", folder)
                continue
            if pid_alive(pid):
                continue
            if kind == "old" and not out.exists() and (folder / "bundle").is_dir():
                with contextlib.suppress(OSError):
                    os.rename(folder / "bundle", out)
                    log.warning("restored %s from %s, left by a run that was killed while replacing it", out, folder)
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                log.info("removed %s, left by a killed run (pid %d)", folder, pid)
                removed.append(folder)
    return removed


def write_file_atomic(path: Path, text: str) -> None:
    """Replace one file atomically (used for validation.json and manifest updates)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise _disk_error(err, path, "write") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(err, path, "write") from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def verify_artifacts(bundle: Path, artifacts: list[Artifact]) -> None:
    """Every listed file lies inside the bundle and exists with the recorded size and hash."""
    root = bundle.resolve()
    for art in artifacts:
        p = bundle / art.path
        if Path(art.path).is_absolute() or root not in p.resolve().parents:
            raise BundleError(f"{bundle}: manifest artifact path {art.path!r} points outside the bundle",
                              hint="re-create the bundle with 'edgepack convert'")
        if not p.is_file():
            raise BundleError(f"{bundle}: {art.path} is missing", hint="re-create the bundle with 'edgepack convert'")
        try:
            data = p.read_bytes()
        except OSError as err:
            raise BundleError(f"{bundle}: cannot read {art.path} ({err.strerror})") from err
        if len(data) != art.bytes or sha256_bytes(data) != art.sha256:
            raise BundleError(f"{bundle}: {art.path} does not match the sha256 in the manifest (modified?)",
                              hint="re-create the bundle with 'edgepack convert'")
