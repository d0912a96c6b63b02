"""Files a bundle's manifest names and edgepack reads again: the source model (``validate``'s default
reference), and a recorded request's inputs (``reproduce``).

A manifest is data from wherever the bundle came from: the files it names are read only when they are
regular files (or folders of them), within a size limit, and only after their sha256 matches the one
recorded at conversion time. A FIFO, a device or ``/dev/zero`` is refused before a byte is read.
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from edgepack.errors import BundleError
from edgepack.packaging.manifest import file_kind, open_regular

MAX_MODEL_BYTES = 2 << 30  # a source model followed from manifest.json (a .tflite cannot hold more)
MAX_INPUT_BYTES = 4 << 30  # one input file (or folder) of a recorded request, hashed before reproduce uses it
MAX_FOLDER_FILES = 100_000  # files in a folder input (image folders, SavedModels)
_CHUNK = 1 << 20


def _file_sha256(path: Path, what: str, budget: list[int], limit: int) -> str:
    """One regular file's sha256, charged to ``budget`` (bytes left). Opened without blocking (a FIFO
    swapped in after the check cannot hang the open), checked on the open descriptor."""
    with open_regular(path, f"{what} {path}") as (f, st):
        if st.st_size > budget[0]:
            raise BundleError(f"{what} {path} is larger than the {limit / 2**30:g} GiB limit for files a manifest "
                              "names")
        h = hashlib.sha256()
        read = 0
        while chunk := f.read(_CHUNK):
            read += len(chunk)
            if read > budget[0]:  # grew while read
                raise BundleError(f"{what} {path} is larger than the {limit / 2**30:g} GiB limit for files a "
                                  "manifest names")
            h.update(chunk)
        budget[0] -= read
    return h.hexdigest()


def bounded_sha256(path: Path, what: str, *, limit: int = MAX_INPUT_BYTES, folders: bool = True,
                   hint: str | None = None) -> str:
    """The sha256 :func:`edgepack.formats.base.file_sha256` recorded (a folder: each regular file's
    relative name and hash, in order), reading only regular files and at most ``limit`` bytes in all.
    :class:`BundleError` naming ``what`` (and giving ``hint``) for anything else (FIFO, device, too large)."""
    try:
        return _sha256(path, what, limit, folders)
    except BundleError as err:
        if hint is None:
            raise
        raise BundleError(err.message, hint=hint) from err.__cause__


def _sha256(path: Path, what: str, limit: int, folders: bool) -> str:
    try:
        st = path.stat()
    except OSError as err:
        raise BundleError(f"{what} {path}: {err.strerror or 'cannot be read'}") from err
    budget = [limit]
    if not stat.S_ISDIR(st.st_mode):
        return _file_sha256(path, what, budget, limit)
    if not folders:
        raise BundleError(f"{what} {path} is a directory, not a regular file")
    entries = []
    for count, q in enumerate(path.rglob("*"), 1):
        if count > MAX_FOLDER_FILES:
            raise BundleError(f"{what} {path} holds more than {MAX_FOLDER_FILES:,} files")
        try:
            mode = q.stat().st_mode
        except OSError as err:
            raise BundleError(f"{what} {q}: {err.strerror or 'cannot be read'}") from err
        if stat.S_ISREG(mode):
            entries.append(q)
        elif not stat.S_ISDIR(mode):
            raise BundleError(f"{what} {q} is {file_kind(mode)}, not a regular file")
    h = hashlib.sha256()
    for q in sorted(entries):
        h.update(str(q.relative_to(path)).encode())
        h.update(_file_sha256(q, what, budget, limit).encode())
    return h.hexdigest()


def check_recorded(path: Path, sha256: str, what: str, *, limit: int = MAX_INPUT_BYTES, folders: bool = True,
                   hint: str) -> None:
    """``path`` is a regular file (or folder of them) within ``limit`` whose sha256 is the recorded one."""
    if bounded_sha256(path, what, limit=limit, folders=folders, hint=hint) != sha256:
        raise BundleError(f"{what} {path} changed since the bundle was made (sha256 differs)", hint=hint)
