"""Reading ``.npy``/``.npz`` files safely: never unpickle, name the file on every failure."""

from __future__ import annotations

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
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise CalibrationError(f"{what} {path}: the array holds pickled Python objects", hint=_PICKLE_HINT) from err
        raise CalibrationError(f"{what} {path}: not a readable .npy array ({err})") from err
    except (OSError, EOFError) as err:
        raise CalibrationError(f"{what} {path}: not a readable .npy file ({err})", hint="write it with np.save") from err


def load_npz(path: Path, *, what: str = "--calibration") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, by key."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for key in npz.files:
                try:
                    out[key] = npz[key]
                except ValueError as err:
                    raise CalibrationError(f"{what} {path}: array {key!r} holds pickled Python objects",
                                           hint=_PICKLE_HINT) from err
            return out
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise CalibrationError(f"{what} {path}: not a readable .npz file ({err})", hint="write it with np.savez") from err


def load_arrays(path: str | Path, *, what: str = "--calibration") -> dict[str, np.ndarray]:
    """``{key: array}`` from an ``.npy`` (key ``""``) or ``.npz`` file."""
    p = Path(path)
    if not p.exists():
        raise CalibrationError(f"{what} {p}: no such file")
    if p.is_dir():
        raise CalibrationError(f"{what} {p}: is a directory; give an .npy or .npz file")
    if p.suffix == ".npz":
        return load_npz(p, what=what)
    if p.suffix == ".npy":
        return {"": load_npy(p, what=what)}
    raise CalibrationError(f"{what} {p}: unsupported file type {p.suffix or '(none)'!r}", hint="use .npy or .npz")
