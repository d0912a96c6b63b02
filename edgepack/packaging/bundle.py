"""Writing bundles atomically: build in a temporary folder beside the output, then rename.

A failure or Ctrl-C at any point leaves no partial bundle and the previous one intact. An
existing output is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgepack.errors import BundleError, PackagingError
from edgepack.packaging.manifest import Artifact


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_output(out: Path, force: bool) -> None:
    """Fail before any work is done if ``out`` cannot be written."""
    if out.exists() and not force:
        raise PackagingError(f"output {out} already exists", hint="pass --force to replace it, or choose another -o")
    if out.exists() and not out.is_dir():
        raise PackagingError(f"output {out} exists and is not a directory", hint="choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise PackagingError(f"output folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise PackagingError(f"output folder {parent} is not writable")


class BundleWriter:
    """Collects the files of a bundle in a staging folder; :meth:`commit` swaps it into place."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.artifacts: list[Artifact] = []

    def add(self, relpath: str, data: bytes | str, role: str) -> Artifact:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        dest = self.staging / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(raw)
        art = Artifact(path=relpath, role=role, bytes=len(raw), sha256=sha256_bytes(raw))
        self.artifacts.append(art)
        return art

    def write_text(self, relpath: str, text: str) -> None:
        """A file that is not an artifact (the manifest itself)."""
        (self.staging / relpath).write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_bundle(out: Path, *, force: bool) -> Iterator[BundleWriter]:
    check_output(out, force)
    out = out.resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield (writer := BundleWriter(staging))
        _swap_into_place(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    del writer


def _swap_into_place(staging: Path, out: Path, force: bool) -> None:
    old = None
    if out.exists():
        if not force:  # appeared while we worked
            raise PackagingError(f"output {out} appeared while converting", hint="pass --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "bundle")
    try:
        os.rename(staging, out)
    except OSError as err:
        if old is not None:
            os.rename(old / "bundle", out)
        raise PackagingError(f"cannot move the bundle into {out}: {err.strerror}") from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file_atomic(path: Path, text: str) -> None:
    """Replace one file atomically (used for validation.json and manifest updates)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
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
