"""Reading ``.npy``/``.npz`` files safely: never unpickle, name the file on every failure."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from edgepack.errors import CalibrationError

_PICKLE_HINT = "edgepack never unpickles data; save a numeric array with np.save(..., allow_pickle=False)"


def load_npy(path: Path, *, what: str = "--calibration") -> np.ndarray:
    """Memory-map an ``.npy`` file (it is not read whole)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err) or "Python objects" in str(err):
            raise CalibrationError(f"{what} {path}: the array holds pickled Python objects", hint=_PICKLE_HINT) from err
        raise CalibrationError(f"{what} {path}: not a readable .npy array ({err})") from err
    except (OSError, EOFError) as err:
        raise CalibrationError(f"{what} {path}: not a readable .npy file ({err})", hint="write it with np.save") from err


def load_npz(path: Path, *, what: str = "--calibration", keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """All arrays (or those in ``keys``) of an ``.npz`` file, by key."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for key in (npz.files if keys is None else keys):
                try:
                    out[key] = npz[key]
                except ValueError as err:
                    raise CalibrationError(f"{what} {path}: array {key!r} holds pickled Python objects",
                                           hint=_PICKLE_HINT) from err
            return out
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise CalibrationError(f"{what} {path}: not a readable .npz file ({err})", hint="write it with np.savez") from err


class OffsetArray:
    """A C-ordered array inside a file, read by offset: rows are fetched with ``pread`` on demand.

    Unlike a memory map, pages read here are not mapped into the process, so a pass over a file of
    any size keeps the resident memory flat (a mapped file's pages count towards RSS as it is read).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted or not), reading each run of consecutive rows in one call."""
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not out.size:
            return out
        flat = out.reshape(len(idx), -1).view(np.uint8).reshape(len(idx), self.row_bytes)
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            start = 0
            while start < len(idx):
                end = start + 1
                while end < len(idx) and idx[end] == idx[end - 1] + 1:
                    end += 1
                want = (end - start) * self.row_bytes
                got = _read_into(fd, flat[start:end].reshape(-1), self.offset + int(idx[start]) * self.row_bytes)
                if got != want:
                    raise CalibrationError(f"{self.path}: file is truncated (row {int(idx[start])} is cut off)",
                                           hint="re-write the file")
                start = end
        return out


def _read_into(fd: int, out: np.ndarray, offset: int) -> int:
    """Read ``out.nbytes`` bytes at ``offset`` straight into ``out`` (no bytes object in between); the count read
    (short only at the end of the file)."""
    view, done = memoryview(out), 0  # a flat uint8 view of the rows
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done


def _npy_header(f, path: Path, what: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as err:
        raise CalibrationError(f"{what} {path}: not a readable .npy array ({err})", hint="write it with np.save") from err
    if dtype.hasobject:
        raise CalibrationError(f"{what} {path}: the array holds pickled Python objects", hint=_PICKLE_HINT)
    return tuple(shape), dtype, fortran


def open_npy(path: Path, *, what: str = "--calibration") -> OffsetArray | np.ndarray:
    """An ``.npy`` file for reading by offset (a Fortran-ordered file falls back to a memory map)."""
    try:
        with open(path, "rb") as f:
            shape, dtype, fortran = _npy_header(f, path, what)
            offset = f.tell()
    except OSError as err:
        raise CalibrationError(f"{what} {path}: not a readable .npy file ({err})", hint="write it with np.save") from err
    if fortran or not shape:
        return load_npy(path, what=what)
    arr = OffsetArray(path, offset, shape, dtype)
    expected = offset + arr.row_bytes * shape[0]
    if path.stat().st_size < expected:
        raise CalibrationError(f"{what} {path}: file is truncated ({path.stat().st_size} of {expected} bytes)",
                               hint="re-write it with np.save")
    return arr


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count * dtype.itemsize


def _member_data_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header_len: int, want: int, path: Path) -> int:
    """Bytes of array data a member really holds, up to ``want`` + 1: stored members by their size
    (never more than the file has after the member's start), compressed ones by decompressing (counted,
    not kept: the header's sizes can be faked)."""
    if info.compress_type == zipfile.ZIP_STORED:
        return min(info.compress_size, path.stat().st_size - info.header_offset) - header_len
    got = 0
    with zf.open(info) as member:
        member.read(header_len)
        while got <= want and (chunk := member.read(min(1 << 20, want + 1 - got))):
            got += len(chunk)
    return got


def _check_declared(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, what: str, key: str,
                    shape: tuple[int, ...], dtype: np.dtype, header_len: int) -> None:
    """Refuse an array whose header declares more data than its member holds, before anything is
    allocated (numpy allocates the declared shape first: a header claiming 10^12 labels is 8 TB)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CalibrationError(f"{what} {path}: array {key!r} is compressed with zip method {info.compress_type}",
                               hint="write it with np.savez or np.savez_compressed")
    declared = _declared_bytes(shape, dtype)
    held = _member_data_bytes(zf, info, header_len, declared, path)
    if held < declared:
        raise CalibrationError(f"{what} {path}: array {key!r} declares shape {shape} ({declared:,} bytes of {dtype}) "
                               f"but its member holds {max(held, 0):,} bytes",
                               hint="the file is truncated or crafted; re-write it with np.savez")


def open_npz(path: Path, *, what: str = "--calibration") -> dict[str, OffsetArray | np.ndarray]:
    """Arrays of an ``.npz``: stored (np.savez) members are read by offset, compressed ones are loaded.
    Every array's declared shape is checked against the bytes its member really holds first."""
    out: dict[str, OffsetArray | np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as member:
                    shape, dtype, fortran = _npy_header(member, path, f"{what} array {key!r} in")
                    header_len = member.tell()
                _check_declared(zf, info, path, what, key, shape, dtype, header_len)
                if info.compress_type != zipfile.ZIP_STORED:
                    out[key] = None  # loaded below, whole
                    continue
                # the member's data starts after its local file header (30 bytes + name + extra)
                raw.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
                data_start = info.header_offset + 30 + int(name_len) + int(extra_len) + header_len
                out[key] = None if fortran or not shape else OffsetArray(path, data_start, shape, dtype)
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise CalibrationError(f"{what} {path}: not a readable .npz file ({err})", hint="write it with np.savez") from err
    missing = [k for k, v in out.items() if v is None]
    if missing:
        out.update(load_npz(path, what=what, keys=missing))
    return out
