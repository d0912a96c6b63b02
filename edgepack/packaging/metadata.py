"""LiteRT metadata in ``model.tflite``: what MediaPipe Tasks and Android Studio's ML Model Binding read.

The metadata is a flatbuffer (file identifier ``M001``, the TFLite Support ``metadata_schema.fbs``)
kept in one of the model's buffers and named by a ``TFLITE_METADATA`` entry of the model's
``metadata`` list; associated files (the labels) are a zip archive appended to the model, which
is where the readers look for them.

edgepack writes the flatbuffer itself with the ``flatbuffers`` Builder (a core dependency), driven
by :data:`LAYOUT` — each table's fields in schema slot order, copied from the schema's field ids —
so the core install needs neither tflite-support (which does not install beside TF 2.19) nor
mediapipe (whose ``metadata_writers`` do not import in 1.2.2). The same layout reads it back
(``inspect``); the tests read it with MediaPipe's generated schema module and run MediaPipe Tasks on it.
Everything written is deterministic (``reproduce`` gives the same bytes).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

from edgepack.errors import BundleError

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# The oldest metadata parser that reads every field below: the fields that raised the version
# (process units per subgraph 1.1.0, tensor groups 1.2.0, file versions 1.4.1, custom metadata
# 1.5.0) are not written.
MIN_PARSER_VERSION = "1.0.0"

# enums of metadata_schema.fbs
COLOR_SPACE = {"rgb": 1, "grayscale": 2}
TENSOR_AXIS_LABELS = 2
CONTENT_PROPERTIES = {"FeatureProperties": 1, "ImageProperties": 2}
PROCESS_UNIT_OPTIONS = {"NormalizationOptions": 1}

# table -> fields in slot order: (name, kind); kinds: str, int8/uint8/int32/uint32, [float], [str],
# a table name, [table name], or union:<type field>:<enum>
LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "ModelMetadata": (("name", "str"), ("description", "str"), ("version", "str"),
                      ("subgraph_metadata", "[SubGraphMetadata]"), ("author", "str"), ("license", "str"),
                      ("associated_files", "[AssociatedFile]"), ("min_parser_version", "str")),
    "SubGraphMetadata": (("name", "str"), ("description", "str"), ("input_tensor_metadata", "[TensorMetadata]"),
                         ("output_tensor_metadata", "[TensorMetadata]"), ("associated_files", "[AssociatedFile]")),
    "TensorMetadata": (("name", "str"), ("description", "str"), ("dimension_names", "[str]"), ("content", "Content"),
                       ("process_units", "[ProcessUnit]"), ("stats", "Stats"), ("associated_files", "[AssociatedFile]")),
    "AssociatedFile": (("name", "str"), ("description", "str"), ("type", "int8"), ("locale", "str")),
    "Content": (("content_properties_type", "uint8"), ("content_properties", "union:content_properties_type:"
                                                                               "CONTENT_PROPERTIES")),
    "ImageProperties": (("color_space", "int8"), ("default_size", "ImageSize")),
    "ImageSize": (("width", "uint32"), ("height", "uint32")),
    "FeatureProperties": (),
    "ProcessUnit": (("options_type", "uint8"), ("options", "union:options_type:PROCESS_UNIT_OPTIONS")),
    "NormalizationOptions": (("mean", "[float]"), ("std", "[float]")),
    "Stats": (("max", "[float]"), ("min", "[float]")),
}
_ENUMS = {"CONTENT_PROPERTIES": CONTENT_PROPERTIES, "PROCESS_UNIT_OPTIONS": PROCESS_UNIT_OPTIONS}
_SCALARS = {"int8": "Int8", "uint8": "Uint8", "int32": "Int32", "uint32": "Uint32"}
# what the flatbuffers accessors raise on offsets or lengths that point outside the buffer
_CORRUPT = (IndexError, ValueError, TypeError, struct.error, UnicodeDecodeError, OverflowError)


# -- writing -------------------------------------------------------------------------------------------
def encode(meta: Mapping[str, Any]) -> bytes:
    """The ``ModelMetadata`` flatbuffer of ``meta`` (nested dicts keyed as :data:`LAYOUT`; a union
    field holds ``{"type": TABLE, ...fields}``)."""
    from flatbuffers import Builder

    builder = Builder(1024)
    builder.Finish(_table(builder, "ModelMetadata", meta), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _table(b, table: str, value: Mapping[str, Any]) -> int:
    layout = LAYOUT[table]
    unknown = set(value) - {name for name, _ in layout} - {"type"}
    if unknown:
        raise ValueError(f"{table} has no field {sorted(unknown)}")
    offsets: dict[str, int] = {}
    for name, kind in layout:  # children first: a flatbuffer table is built after what it points to
        if value.get(name) is not None and kind not in _SCALARS:
            offsets[name] = _child(b, kind, value[name])
    unions = {kind.split(":")[1]: (name, _ENUMS[kind.split(":")[2]]) for name, kind in layout
              if kind.startswith("union:")}
    b.StartObject(len(layout))
    for slot, (name, kind) in enumerate(layout):
        if name in unions:  # a union's type field: the type of the table the union field holds
            union, enum = unions[name]
            if value.get(union) is not None:
                b.PrependUint8Slot(slot, enum[value[union]["type"]], 0)
        elif name in offsets:
            b.PrependUOffsetTRelativeSlot(slot, offsets[name], 0)
        elif kind in _SCALARS and value.get(name) is not None:
            getattr(b, f"Prepend{_SCALARS[kind]}Slot")(slot, int(value[name]), 0)
    return b.EndObject()


def _child(b, kind: str, value: Any) -> int:
    if kind == "str":
        return b.CreateString(str(value))
    if kind.startswith("union:"):
        return _table(b, value["type"], {k: v for k, v in value.items() if k != "type"})
    if kind == "[float]":
        b.StartVector(4, len(value), 4)
        for v in reversed(value):
            b.PrependFloat32(float(v))
        return b.EndVector()
    if kind.startswith("["):
        inner = kind[1:-1]
        items = [b.CreateString(str(v)) if inner == "str" else _table(b, inner, v) for v in value]
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()
    return _table(b, kind, value)


# -- reading -------------------------------------------------------------------------------------------
def decode(buf: bytes, name: str = "the model") -> dict[str, Any]:
    """The ``ModelMetadata`` flatbuffer as nested dicts (the fields of :data:`LAYOUT` that are set);
    ``name`` says whose metadata it is in an error."""
    from flatbuffers import encode as fb_encode
    from flatbuffers import packer
    from flatbuffers.table import Table

    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise BundleError(f"{name}: its TFLITE_METADATA is not a metadata flatbuffer (no M001 identifier)")
    try:
        return _read(Table(buf, fb_encode.Get(packer.uoffset, buf, 0)), "ModelMetadata")
    except _CORRUPT as err:
        raise BundleError(f"{name}: its metadata flatbuffer is corrupt ({err})",
                          hint="re-create it with 'edgepack convert'") from err


def _read(tab, table: str) -> dict[str, Any]:
    from flatbuffers import number_types as nt
    from flatbuffers.table import Table

    out: dict[str, Any] = {}
    layout = LAYOUT[table]
    type_fields = {kind.split(":")[1] for _, kind in layout if kind.startswith("union:")}
    types: dict[str, int] = {}
    for slot, (name, kind) in enumerate(layout):
        o = tab.Offset(4 + 2 * slot)
        if not o:
            continue
        if name in type_fields:  # read with its union, not shown
            types[name] = tab.Get(nt.Uint8Flags, o + tab.Pos)
            continue
        if kind in _SCALARS:
            out[name] = tab.Get(getattr(nt, f"{_SCALARS[kind]}Flags"), o + tab.Pos)
        elif kind == "str":
            out[name] = tab.String(o + tab.Pos).decode("utf-8")
        elif kind.startswith("union:"):
            _, type_field, enum = kind.split(":")
            type_name = {v: k for k, v in _ENUMS[enum].items()}.get(types.get(type_field))
            if type_name is not None:
                t = Table(tab.Bytes, tab.Indirect(o + tab.Pos))
                out[name] = {"type": type_name, **_read(t, type_name)}
        elif kind.startswith("["):
            inner, start = kind[1:-1], tab.Vector(o)
            n = tab.VectorLen(o)
            if inner == "float":
                out[name] = [tab.Get(nt.Float32Flags, start + 4 * i) for i in range(n)]
            elif inner == "str":
                out[name] = [tab.String(start + 4 * i).decode("utf-8") for i in range(n)]
            else:
                out[name] = [_read(Table(tab.Bytes, tab.Indirect(start + 4 * i)), inner) for i in range(n)]
        else:
            out[name] = _read(Table(tab.Bytes, tab.Indirect(o + tab.Pos)), kind)
    return out


# -- in the model --------------------------------------------------------------------------------------
def embed(model: bytes, meta: Mapping[str, Any], files: Mapping[str, bytes]) -> bytes:
    """``model`` with ``meta`` as its TFLITE_METADATA (replacing any) and ``files`` appended as the
    associated-file zip; every other buffer, metadata entry and signature is kept."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import Builder

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(_flatbuffer_part(model), 0))
    old = next((m for m in obj.metadata or [] if (m.name or b"").decode() == METADATA_NAME), None)
    buffer = schema.BufferT()
    buffer.data = list(encode(meta))
    if old is not None:  # replaced in place: embedding twice gives the bytes embedding once gives
        obj.buffers[old.buffer] = buffer
    else:
        obj.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(obj.buffers) - 1
        obj.metadata = [*(obj.metadata or []), entry]
    builder = Builder(len(model) + 4096)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    if files:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as z:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # no clock in the bytes
                info.external_attr = 0o644 << 16
                z.writestr(info, files[name])
    return out.getvalue()


def _flatbuffer_part(model: bytes) -> bytes:
    """The model without an appended zip (an old metadata's associated files)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            first = min((i.header_offset for i in z.infolist()), default=None)
    except zipfile.BadZipFile:
        return model
    return model[:first] if first else model


def read(model: bytes, name: str = "the model") -> dict[str, Any] | None:
    """The model's metadata (as :func:`decode`) and its associated files' names
    (``"files"``), or None when it has none; :class:`BundleError` when it is corrupt."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        m = schema.Model.GetRootAsModel(model, 0)
        found = None
        for i in range(m.MetadataLength()):
            entry = m.Metadata(i)
            if (entry.Name() or b"").decode() == METADATA_NAME:
                data = m.Buffers(entry.Buffer()).DataAsNumpy()
                found = data.tobytes() if hasattr(data, "tobytes") else b""
    except _CORRUPT as err:
        raise BundleError(f"{name}: its metadata list is corrupt ({err})",
                          hint="re-create it with 'edgepack convert'") from err
    if found is None:
        return None
    meta = decode(found, name)
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            meta["files"] = sorted(z.namelist())
    except (zipfile.BadZipFile, *_CORRUPT):
        meta["files"] = []
    return meta


def associated_file(model: bytes, name: str) -> bytes:
    """One associated file's bytes (e.g. the labels) from the zip appended to the model."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            return z.read(name)
    except (zipfile.BadZipFile, KeyError) as err:
        raise BundleError(f"the model has no associated file {name!r}") from err


# -- what an app needs, from the bundle's facts --------------------------------------------------------
def pixel_normalization(pre: Mapping[str, Any] | None) -> tuple[list[float], list[float]] | None:
    """Per-channel ``(mean, std)`` in pixel units of a preprocessing spec (``x = (pixel - mean) / std``:
    its ``scale``, ``mean`` and ``std`` folded into one step), or None when it does not normalize."""
    if not pre or not any(k in pre for k in ("scale", "mean", "std")):
        return None
    scale = float(pre.get("scale") or 1.0)
    means = [float(m) / scale for m in pre.get("mean") or [0.0]]
    stds = [float(s) / scale for s in pre.get("std") or [1.0]]
    return means, stds


def is_image(t: Any) -> bool:
    """An NHWC input of 1 or 3 channels whose preprocessing treats it as pixels."""
    pre = t.preprocessing or {}
    return (len(t.shape) == 4 and t.shape[-1] in (1, 3) and (pre.get("layout") or "nhwc") == "nhwc"
            and (bool(pre.get("color") or pre.get("resize")) or pixel_normalization(pre) is not None
                 or t.dtype == "uint8"))


def _input_meta(t: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name}
    if not is_image(t):
        stats = t.statistics or {}
        out["content"] = {"content_properties": {"type": "FeatureProperties"}}
        out["description"] = f"{t.dtype} tensor of shape {list(t.shape)}"
        if "min" in stats and "max" in stats:
            out["stats"] = {"max": [float(stats["max"])], "min": [float(stats["min"])]}
        return out
    pre = t.preprocessing or {}
    channels, (height, width) = t.shape[-1], t.shape[1:3]
    color = "grayscale" if channels == 1 else "rgb"
    props = {"type": "ImageProperties", "color_space": COLOR_SPACE[color],
             "default_size": {"width": int(width), "height": int(height)}}
    out["content"] = {"content_properties": props}
    norm = pixel_normalization(pre)
    mean, std = norm if norm is not None else ([0.0], [1.0])
    out["description"] = (f"{width}x{height} {color.upper()} image, {t.dtype}"
                          + ("" if t.dtype == "uint8" else f", (pixel - {_nums(mean)}) / {_nums(std)}"))
    out["process_units"] = [{"options": {"type": "NormalizationOptions", "mean": mean, "std": std}}]
    if t.dtype == "uint8":
        out["stats"] = {"max": [255.0], "min": [0.0]}
    else:
        n = max(len(mean), len(std))
        mean, std = mean * (n // len(mean)), std * (n // len(std))
        out["stats"] = {"max": [(255.0 - m) / s for m, s in zip(mean, std)],
                        "min": [(0.0 - m) / s for m, s in zip(mean, std)]}
    return out


def _nums(values: list[float]) -> str:
    return "/".join(f"{v:g}" for v in values)


def _output_meta(t: Any, labels: str | None, value_range: tuple[float, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "content": {"content_properties": {"type": "FeatureProperties"}}}
    if labels is not None:
        out["description"] = f"scores of shape {list(t.shape)}: one per class of {labels}, {t.dtype}"
        out["dimension_names"] = ["batch", "class"]
        out["associated_files"] = [{"name": labels, "description": "one label per class, in score order",
                                    "type": TENSOR_AXIS_LABELS}]
    else:
        out["description"] = f"{t.dtype} tensor of shape {list(t.shape)}"
    if value_range is not None:
        out["stats"] = {"max": [float(value_range[1])], "min": [float(value_range[0])]}
    return out


def model_metadata(*, info: Mapping[str, str | None], inputs: list, outputs: list, signature: str,
                   labels: str | None = None, classifier: str | None = None,
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """The metadata of a model: ``info`` (name, description, version, author, license), ``inputs`` and
    ``outputs`` (manifest :class:`~edgepack.packaging.manifest.TensorInfo`, in the graph's order),
    ``labels`` (the associated file) for the ``classifier`` output, ``ranges`` per output name."""
    meta: dict[str, Any] = {k: v for k, v in info.items() if v}
    meta["subgraph_metadata"] = [{
        "name": signature,
        "input_tensor_metadata": [_input_meta(t) for t in inputs],
        "output_tensor_metadata": [_output_meta(t, labels if t.name == classifier else None,
                                                (ranges or {}).get(t.name)) for t in outputs]}]
    meta["min_parser_version"] = MIN_PARSER_VERSION
    return meta
