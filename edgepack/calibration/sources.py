"""Opening what users have as data for the model's inputs.

``data`` is one path for the whole model — ``.npy`` (one input), ``.npz`` keyed by input name (or
``x``; labels under ``y``), an image folder, a ``.csv`` — or a mapping from input name to such a
path for models with several inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgepack.calibration.arrays import OffsetArray, open_npy, open_npz
from edgepack.calibration.preprocess import Preprocess
from edgepack.calibration.source import ArraySource, Source
from edgepack.errors import CalibrationError

if TYPE_CHECKING:
    from edgepack.calibration.dataset import Dataset, InputSpec

DataArg = str | Path | Mapping[str, str | Path]


def _kind(p: Path, what: str) -> str:
    if not p.exists():
        raise CalibrationError(f"{what} {p}: no such file or folder")
    if p.is_dir():
        return "images"
    kind = p.suffix.lower().lstrip(".")
    if kind not in ("npy", "npz", "csv"):
        raise CalibrationError(f"{what} {p}: unsupported file type {p.suffix or '(none)'!r}",
                               hint="use .npy, .npz, .csv or a folder of JPEG/PNG/BMP images")
    return kind


def _one_input_source(p: Path, spec: InputSpec, *, what: str, pre: Preprocess | None, label_key: str,
                      label_column: str | None, class_index: Mapping[str, int] | None,
                      npz_key: str | None = None) -> tuple[Source, np.ndarray | None]:
    """A source for one input from one path, and labels stored beside it (.npz ``y``)."""
    from edgepack.calibration.csvdata import CsvSource
    from edgepack.calibration.images import ImageFolderSource

    kind = _kind(p, what)
    where = f"{what} {p}"
    if kind == "images":
        return ImageFolderSource(p, spec.shape, spec.dtype, what=what, preprocess=pre, class_index=class_index), None
    if kind == "csv":
        return CsvSource(p, spec.shape, what=what, label_column=label_column, preprocess=pre,
                         model_dtype=spec.dtype, class_index=class_index), None
    if kind == "npy":
        return ArraySource(open_npy(p, what=what), where=where, preprocess=pre, model_dtype=spec.dtype), None
    raw = open_npz(p, what=what)
    labels = raw.pop(label_key, None)
    data = [k for k in raw]
    key = next((k for k in (npz_key, spec.name, "x") if k is not None and k in raw), None)
    if key is None and len(data) == 1:
        key = data[0]
    if key is None:
        raise CalibrationError(f"{where}: no array for model input {spec.name!r} (keys: {', '.join(sorted(raw)) or 'none'})",
                               hint=f"save it as np.savez(..., **{{{spec.name!r}: array}})")
    return (ArraySource(raw[key], where=where, preprocess=pre, model_dtype=spec.dtype),
            None if labels is None else _labels_array(labels, where))


def _labels_array(labels, where: str) -> np.ndarray:
    if getattr(labels, "ndim", 1) == 0:
        raise CalibrationError(f"{where}: labels hold a single value (a 0-d array)",
                               hint="store one label per sample, shape (N,) or one-hot (N, classes)")
    arr = labels.take(np.arange(len(labels))) if isinstance(labels, OffsetArray) else np.asarray(labels)
    if arr.dtype.kind not in "iuf":
        raise CalibrationError(f"{where}: labels have dtype {arr.dtype}", hint="store class ids or one-hot rows")
    return arr


def _npz_multi(p: Path, inputs: Sequence[InputSpec], *, what: str, pre: Mapping[str, Preprocess | None],
               label_key: str) -> tuple[dict[str, Source], np.ndarray | None]:
    raw = open_npz(p, what=what)
    labels = raw.pop(label_key, None)
    out: dict[str, Source] = {}
    for spec in inputs:
        if spec.name not in raw:
            keys = ", ".join(sorted(raw)) or "none"
            raise CalibrationError(f"{what} {p}: no array for model input {spec.name!r} (keys: {keys})",
                                   hint=f"save it as np.savez(..., **{{{spec.name!r}: array}})")
        out[spec.name] = ArraySource(raw[spec.name], where=f"{what} {p}", preprocess=pre.get(spec.name),
                                     model_dtype=spec.dtype)
    return out, None if labels is None else _labels_array(labels, f"{what} {p}")


def open_dataset(data: DataArg, inputs: Sequence[InputSpec], *, what: str = "--calibration",
                 preprocess: Mapping[str, Preprocess | None] | None = None, label_key: str = "y",
                 label_column: str | None = None, class_names: Sequence[str] | None = None,
                 require_labels: bool = False) -> Dataset:
    """A checked :class:`Dataset` for ``inputs`` from ``data`` (one path, or ``{input name: path}``):
    ``.npy``/``.npz``/``.csv``/image folder; ``require_labels`` refuses data without labels."""
    from edgepack.calibration.dataset import Dataset

    pre = dict(preprocess or {})
    class_index = {c: i for i, c in enumerate(class_names)} if class_names else None
    names = [s.name for s in inputs]
    common = dict(what=what, label_key=label_key, label_column=label_column, class_index=class_index)
    sources: dict[str, Source] = {}
    labels = None
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise CalibrationError(f"{what} {unknown[0]}=...: the model has no input {unknown[0]!r}",
                                   hint=f"model inputs: {', '.join(names)}")
        missing = [n for n in names if n not in data]
        if missing:
            raise CalibrationError(f"{what}: no data for model input {missing[0]!r}",
                                   hint=f"give one {what} NAME=PATH for each input: {', '.join(names)}")
        for spec in inputs:
            src, lab = _one_input_source(Path(data[spec.name]), spec, pre=pre.get(spec.name), **common)
            sources[spec.name] = src
            labels = labels if labels is not None else (lab if lab is not None else src.labels)
        source = f"{what} " + ", ".join(f"{k}={v}" for k, v in data.items())
        class_found = next((s.class_names for s in sources.values() if s.class_names), None)
    else:
        p = Path(data)
        kind = _kind(p, what)
        if kind == "npz" and (len(inputs) > 1):
            sources, labels = _npz_multi(p, inputs, what=what, pre=pre, label_key=label_key)
        elif len(inputs) > 1:
            raise CalibrationError(f"{what} {p}: one {'folder' if kind == 'images' else '.' + kind} for a model "
                                   f"with {len(inputs)} inputs ({', '.join(names)})",
                                   hint=f"give an .npz keyed by input name, or {what} NAME=PATH per input")
        else:
            src, labels = _one_input_source(p, inputs[0], pre=pre.get(names[0]), **common)
            sources = {names[0]: src}
            labels = labels if labels is not None else src.labels
        source = f"{what} {p}"
        class_found = next((s.class_names for s in sources.values() if s.class_names), None)
    ds = Dataset(sources, labels, source=source)
    ds.class_names = class_found
    if require_labels and ds.labels is None:
        raise CalibrationError(f"{ds.source}: no labels",
                               hint=f"store them under the key {label_key!r}, use class subfolders, "
                                    "or pass --label-column")
    ds.check(inputs)
    return ds


def read_labels(path: Path, *, what: str = "--labels") -> list[str]:
    """Class labels, one per line (blank lines skipped): a bundle's labels.txt or the --labels file."""
    from edgepack.errors import UsageError

    try:
        labels = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path}: cannot read as UTF-8 text ({err})") from err
    if not labels:
        raise UsageError(f"{what} {path}: file has no labels", hint="one label per line")
    return labels
