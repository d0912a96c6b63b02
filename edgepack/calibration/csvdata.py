"""CSV files as a data source: numeric columns in order, an optional header, an optional label column.

Each row is one sample, reshaped into the model input's shape (e.g. a window of sensor readings).
The file is scanned once up front (every row checked, its byte offset kept), then rows are parsed
again on demand, so memory holds offsets, not values.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgepack.calibration.preprocess import Preprocess
from edgepack.calibration.source import Source
from edgepack.errors import CalibrationError

# Bytes of one CSV line (one sample). A row is parsed whole, and its cells cost ~60 bytes each as
# Python strings: 4 MiB of "0.1," is ~1M values and ~60 MB while parsed; a 100 MB line took 2.8 GB.
MAX_LINE_BYTES = 4 << 20


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _label_position(label_column: str | None, header: list[str] | None, width: int, where: str) -> int | None:
    if label_column is None:
        return None
    if header is not None and label_column in header:
        return header.index(label_column)
    try:
        pos = int(label_column)
    except ValueError:
        cols = ", ".join(header) if header else "the file has no header row"
        raise CalibrationError(f"{where}: no column {label_column!r} for --label-column ({cols})") from None
    if not -width <= pos < width:
        raise CalibrationError(f"{where}: --label-column {pos} is out of range for rows of {width} columns")
    return pos % width


class CsvSource(Source):
    """Rows of a CSV file, one sample each."""

    def __init__(self, path: Path, model_shape: Sequence[int | None], *, what: str,
                 label_column: str | None = None, preprocess: Preprocess | None = None,
                 model_dtype: str = "float32", class_index: Mapping[str, int] | None = None) -> None:
        self.path = path
        self.where = f"{what} {path}"
        self.preprocess = preprocess
        self.model_dtype = model_dtype
        self.model_shape = tuple(model_shape)
        self._scan(label_column, class_index)

    def _rows(self):
        """``(line number, byte offset, cells)`` of every non-blank line."""
        try:
            f = open(self.path, "rb")
        except OSError as err:
            raise CalibrationError(f"{self.where}: cannot open ({err.strerror})") from err
        with f:
            offset = 0
            line_no = 0
            while raw := f.readline(MAX_LINE_BYTES + 1):
                line_no += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise self._too_long(line_no)
                start, offset = offset, offset + len(raw)
                try:
                    text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise CalibrationError(f"{self.where}: line {line_no} is not UTF-8 text") from None
                if text.strip():
                    yield line_no, start, next(csv.reader([text]))

    def _too_long(self, line_no: int) -> CalibrationError:
        return CalibrationError(f"{self.where}: line {line_no} is longer than {MAX_LINE_BYTES >> 20} MiB (edgepack's "
                                "limit for one CSV row)", hint="one sample per line; give long samples as .npy/.npz")

    def _scan(self, label_column: str | None, class_index: Mapping[str, int] | None) -> None:
        offsets, lines, raw_labels = array("q"), array("q"), []  # compact: 8 bytes a row
        header: list[str] | None = None
        width = label_pos = None
        for line_no, start, cells in self._rows():
            cells = [c.strip() for c in cells]
            if width is None:
                width = len(cells)
                if not all(_is_number(c) for c in cells):
                    header = cells
                label_pos = _label_position(label_column, header, width, self.where)
                if header is not None:
                    continue
            if len(cells) != width:
                raise CalibrationError(f"{self.where}: line {line_no} has {len(cells)} columns, expected {width}",
                                       hint="every row needs the same number of values")
            for col, cell in enumerate(cells):
                if col != label_pos and not _is_number(cell):
                    name = f" ({header[col]!r})" if header else ""
                    raise CalibrationError(f"{self.where}: line {line_no}, column {col + 1}{name}: {cell!r} is "
                                           "not a finite number",
                                           hint="pass --label-column for a label column; fix or drop the row")
            offsets.append(start)
            lines.append(line_no)
            if label_pos is not None:
                raw_labels.append(cells[label_pos])
        if not offsets:
            raise CalibrationError(f"{self.where}: holds no data rows")
        self.offsets = np.frombuffer(offsets, np.int64)
        self.lines = np.frombuffer(lines, np.int64)
        self.header = header
        self.label_pos = label_pos
        self.features = width - (label_pos is not None)
        if label_pos is not None:
            self.labels, self.class_names = _encode_labels(raw_labels, class_index, self.where)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def shape_hint(self) -> str:
        need = int(np.prod([d for d in self.model_shape if d is not None]))
        return f"each CSV row ({self.features} values) is reshaped to the input shape, which needs {need} values"

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        known = [d for d in self.model_shape if d is not None]
        if len(known) == len(self.model_shape) and int(np.prod(known)) == self.features:
            return self.model_shape
        return (self.features,)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.preprocess.dtype or self.model_dtype) if self.preprocess else np.dtype(np.float32)

    def locate(self, i: int) -> str:
        return f"line {int(self.lines[i])}"

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.features), np.float32)
        with open(self.path, "rb") as f:
            for k, i in enumerate(idx):
                f.seek(int(self.offsets[i]))
                raw = f.readline(MAX_LINE_BYTES + 1)
                if len(raw) > MAX_LINE_BYTES:  # the file changed since the scan
                    raise self._too_long(int(self.lines[i]))
                cells = next(csv.reader([raw.decode("utf-8-sig")]))
                if self.label_pos is not None:
                    del cells[self.label_pos]
                try:
                    out[k] = [float(c) for c in cells]
                except ValueError as err:  # the file changed since the scan
                    raise CalibrationError(f"{self.where}: {self.locate(int(i))} changed while reading ({err})") from err
        batch = out.reshape(len(idx), *self.sample_shape)
        return batch if self.preprocess is None else self.preprocess.apply_numeric(batch, self.model_dtype)


def _encode_labels(raw: list[str], class_index: Mapping[str, int] | None,
                   where: str) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels stay as they are; names map through the bundle's labels, or sorted order."""
    if class_index is None and all(c.lstrip("-").isdigit() for c in raw):
        return np.asarray([int(c) for c in raw], np.int64), None
    names = sorted(set(raw))
    index = dict(class_index) if class_index is not None else {c: i for i, c in enumerate(names)}
    for c in raw:
        if c not in index and not c.lstrip("-").isdigit():
            raise CalibrationError(f"{where}: label {c!r} is not one of the bundle's labels",
                                   hint="use the names in labels.txt or class ids")
    return np.asarray([index[c] if c in index else int(c) for c in raw], np.int64), names
