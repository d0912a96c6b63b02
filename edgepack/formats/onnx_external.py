"""ONNX tensors stored outside the ``.onnx`` file: where they may live, and reading exactly their bytes.

A tensor's data file is read only from inside the model's folder (no absolute paths, no ``..``, no
symlinks), only when it is a regular file (a FIFO or a directory is named as such), and only the
bytes the tensor needs: ``offset`` and ``length`` from the model, checked against the tensor's shape
and dtype, read with ``pread``. A data file larger than its tensor is refused unless the model
records the tensor's offset and length in it (onnx's own loader would read the whole file: a
432-byte tensor beside a 12 GB sparse file would take 12 GB).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ModelLoadError

# All external tensors of one model together. A TFLite flatbuffer holds at most 2 GiB, which an int8
# model reaches from 8 GiB of float32 weights; a model with more cannot be deployed by edgepack.
MAX_EXTERNAL_BYTES = 8 << 30
_READ_CHUNK = 64 << 20
_PACKED_4BIT = ("INT4", "UINT4", "FLOAT4E2M1")


def all_tensors(graph) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs."""
    from onnx import AttributeProto

    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.GRAPH:
                yield from all_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_tensors(g)


def load_external_data(model, folder: Path) -> int:
    """Check every externally stored tensor of ``model`` (location, file kind, byte range), then read
    exactly its bytes into the model. Returns how many tensors were external."""
    from onnx import TensorProto

    root = folder.resolve()
    plans: list[tuple[Any, Path, int, int]] = []
    total = 0
    for t in all_tensors(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        why = _unsafe_location(loc, folder, root)
        if why:
            raise ModelLoadError(f"ONNX tensor {t.name!r}: external data location {loc!r} {why}",
                                 hint=f"keep external data files inside {folder} and refer to them by relative path")
        offset, length = byte_range(t, folder / loc, loc)
        total += length
        if total > MAX_EXTERNAL_BYTES:
            raise ModelLoadError(f"ONNX tensor {t.name!r}: the model's external data exceeds {MAX_EXTERNAL_BYTES >> 30} "
                                 "GiB (edgepack's limit: a TFLite model holds at most 2 GiB)",
                                 hint="a model this large cannot be deployed by edgepack")
        plans.append((t, folder / loc, offset, length))
    for t, file, offset, length in plans:
        t.raw_data = _read_range(file, offset, length, t.name)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
    return len(plans)


def tensor_bytes(t) -> int | None:
    """The bytes ``t``'s shape and dtype need, or None for types with no fixed size (strings)."""
    from onnx import TensorProto, helper

    name = TensorProto.DataType.Name(t.data_type)
    count = 1
    for d in t.dims:
        count *= int(d)
    if name in _PACKED_4BIT:
        return (count + 1) // 2
    if name in ("STRING", "UNDEFINED"):
        return None
    try:
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def byte_range(t, file: Path, loc: str) -> tuple[int, int]:
    """``(offset, length)`` of ``t``'s bytes in ``file``, checked against the file and the tensor:
    never more than the tensor needs, never past the file's end."""
    from onnx import TensorProto

    info = {e.key: e.value for e in t.external_data}
    try:
        offset, length = int(info.get("offset") or 0), int(info["length"]) if info.get("length") else None
    except ValueError:
        raise _bad(t, f"offset/length {info.get('offset')!r}/{info.get('length')!r} are not numbers") from None
    if offset < 0 or (length is not None and length < 0) or any(d < 0 for d in t.dims):
        raise _bad(t, f"negative offset, length or dimension (offset {offset}, length {length}, shape {list(t.dims)})")
    need = tensor_bytes(t)
    if need is None:
        raise _bad(t, f"{TensorProto.DataType.Name(t.data_type).lower()} tensors have no fixed size and cannot be "
                      "read from external data")
    size = file.stat().st_size
    if offset > size:
        raise _short(t, f"it starts at byte {offset}, past the end of {loc} ({size} bytes)")
    available = size - offset
    if length is not None and length > available:
        raise _short(t, f"{length} bytes at offset {offset} are recorded, {loc} holds {available} from there")
    have = length if length is not None else available
    if have < need:
        raise _short(t, f"shape {list(t.dims)} ({TensorProto.DataType.Name(t.data_type).lower()}) needs {need} bytes, "
                        f"{loc} holds {have} at offset {offset}")
    if have > need:
        recorded = f"{length} bytes are recorded" if length is not None else \
            f"{loc} holds {have} bytes from offset {offset} and the model records no length"
        raise _bad(t, f"{recorded}, but shape {list(t.dims)} needs only {need}; edgepack reads exactly the bytes "
                      "a tensor needs")
    return offset, need


def _short(t, why: str) -> ModelLoadError:
    # checked at load, because onnx reads a short range silently and the fault would surface later
    # as an unrelated reshape error in onnx2tf
    return ModelLoadError(f"ONNX tensor {t.name!r}: external data is short: {why}",
                          hint="the data file is truncated or does not belong to this model; re-export both")


def _bad(t, why: str) -> ModelLoadError:
    return ModelLoadError(f"ONNX tensor {t.name!r}: external data does not fit the tensor: {why}",
                          hint="re-export the model (onnx.save with save_as_external_data=True records offsets)")


def _read_range(file: Path, offset: int, length: int, name: str) -> bytes:
    """``length`` bytes at ``offset``, from a regular file only (checked again on the open descriptor:
    the path was checked before, and a FIFO swapped in meanwhile must not block the read)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(file, flags)
    except OSError as err:
        raise ModelLoadError(f"ONNX tensor {name!r}: cannot open external data {file.name} ({err.strerror})") from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelLoadError(f"ONNX tensor {name!r}: external data {file.name} is not a regular file")
        out = bytearray(length)
        done = 0
        while done < length:
            chunk = os.pread(fd, min(_READ_CHUNK, length - done), offset + done)
            if not chunk:
                raise ModelLoadError(f"ONNX tensor {name!r}: external data {file.name} ended after {done} of "
                                     f"{length} bytes (it changed while reading)")
            out[done:done + len(chunk)] = chunk
            done += len(chunk)
        return bytes(out)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _unsafe_location(loc: str, folder: Path, root: Path) -> str | None:
    if not loc:
        return "is empty"
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        return "is an absolute path"
    parts = Path(loc.replace("\\", "/")).parts
    if ".." in parts:
        return "leaves the model's folder (..)"
    current = folder
    for part in parts:
        current = current / part
        if current.is_symlink():
            return f"goes through a symlink ({current.name})"
    try:
        mode = current.stat().st_mode
    except FileNotFoundError:
        return f"does not exist in {folder}"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    kind = _file_kind(mode)
    if kind is not None:
        return f"is {kind}, not a data file"
    if root not in current.resolve().parents:
        return "resolves outside the model's folder"
    return None
