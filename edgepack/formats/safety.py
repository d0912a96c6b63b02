"""What edgepack checks in a model file before any loader sees it.

Loaders of model files can run code stored in them: Keras ``Lambda`` layers hold bytecode, a Keras
config can name any importable function, a SavedModel's initializers and signatures run graph ops
that read and write files, and a crafted archive can decompress to gigabytes. Every check here only
*reads* the file (bounded), and raises :class:`UnsafeModelError` or :class:`ModelLoadError` with one
line that names the layer, module, op or member. ``--trust-model`` turns off the code checks
(Lambda layers, foreign modules, SavedModel ops) but never the archive limits.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from edgepack.errors import ModelLoadError, UnsafeModelError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

# A TFLite flatbuffer cannot exceed 2 GiB, so a source model that decompresses to more cannot be
# deployed by edgepack anyway; the config is JSON text and never needs more than a few MiB.
MAX_CONFIG_BYTES = 64 << 20
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 2 << 30
MAX_MEMBERS = 10_000
# Keras writes its archives with zipfile's defaults (stored members); deflate is what any zip tool
# uses. Other methods (bzip2, lzma, zstd) are refused before a byte is decompressed: bzip2 hands back
# hundreds of MiB per small read, so counting output in chunks would no longer bound the work.
ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 93: "zstandard", 95: "xz", 98: "ppmd",
                 9: "deflate64", 6: "implode"}
# A member that inflates to more than MAX_RATIO times its compressed size (once past RATIO_FLOOR) is a
# bomb: Keras' members are stored (ratio 1) and float weights deflate to ~1.1:1; zeros deflate to ~1000:1.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
# Decompressed in 64 KiB reads: the ratio and size limits are checked after each one.
READ_CHUNK = 64 << 10

UNSAFE_LAYERS = ("Lambda", "TFOpLambda")
# Keras configs name the module of every object they deserialize; only Keras' own are built-in.
_KERAS_MODULES = ("keras", "tf_keras")
_TRUST_HINT = "re-run with --trust-model only if you trust where this file came from"

# Graph ops that touch the file system, other processes or the network. A SavedModel holding any
# of them (in a signature, an initializer or any function of its library) is refused unless
# trusted, because tf.saved_model.load and the serving function would run them on this machine.
SAVED_MODEL_DENYLIST = frozenset("""
ReadFile WriteFile MatchingFiles DeleteFile IsDirectory Glob ImmutableConst
PyFunc PyFuncStateless EagerPyFunc
InitializeTableFromTextFile InitializeTableFromTextFileV2
WholeFileReader WholeFileReaderV2 TextLineReader TextLineReaderV2 FixedLengthRecordReader
FixedLengthRecordReaderV2 TFRecordReader TFRecordReaderV2 LMDBReader IdentityReader IdentityReaderV2
ReaderReadV2 ReaderReadUpToV2
TFRecordDataset TFRecordDatasetV2 FixedLengthRecordDataset FixedLengthRecordDatasetV2 TextLineDataset
DatasetToTFRecord ExperimentalDatasetToTFRecord SaveDataset SaveDatasetV2 LoadDataset SnapshotDataset
SnapshotDatasetV2 CSVDataset CSVDatasetV2 ExperimentalCSVDataset LMDBDataset ExperimentalLMDBDataset
SqlDataset ExperimentalSqlDataset
Save SaveSlices SaveV2 MergeV2Checkpoints Restore RestoreSlice RestoreV2 ShardedFilename ShardedFilespec
CreateSummaryFileWriter CreateSummaryDbWriter WriteSummary WriteScalarSummary WriteHistogramSummary
WriteImageSummary WriteAudioSummary WriteGraphSummary WriteRawProtoSummary ImportEvent
FlushSummaryWriter
DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary DebugNumericSummaryV2
Rpc TryRpc GcsConfigureBlockCache GcsConfigureCredentials BigQueryReader
""".split())
# The checkpoint ops above are also what every SavedModel's own saver uses; those functions are
# named by the saver_def and are only run by tf.train.Checkpoint, never by loading or serving.
_SAVER_OPS = frozenset("Save SaveSlices SaveV2 MergeV2Checkpoints Restore RestoreSlice RestoreV2 "
                       "ShardedFilename ShardedFilespec".split())


# -- what kind of file ------------------------------------------------------------------------------
def _hdf5_offsets(size: int) -> Iterator[int]:
    """Where an HDF5 superblock may start: 0, 512, 1024, 2048, ... (the format's rule)."""
    yield 0
    off = 512
    while off + len(HDF5_MAGIC) <= size:
        yield off
        off *= 2


def signatures(path: Path) -> tuple[bool, bool]:
    """(is a zip, is HDF5), judged from the whole file: a zip's central directory sits at its end,
    an HDF5 superblock may start at any power-of-two offset from 512, so a file can be both.
    An ``.onnx`` file counts as a zip only by its first bytes: raw tensor data near its end can hold
    a zip end-of-directory signature by chance, and ONNX loading runs no code either way."""
    size = path.stat().st_size
    with path.open("rb") as f:
        is_h5 = False
        for off in _hdf5_offsets(size):
            f.seek(off)
            if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
                is_h5 = True
                break
        f.seek(0)
        head = f.read(4)
    is_zip = head == ZIP_MAGIC or (path.suffix.lower() != ".onnx" and zipfile.is_zipfile(path))
    return is_zip, is_h5


# -- archives --------------------------------------------------------------------------------------
def _bad_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return (name.startswith(("/", "\\")) or "\\" in name or ".." in p.parts
            or (len(name) > 1 and name[1] == ":"))


def check_archive(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse traversal names, compression methods Keras never writes, members whose compressed bytes
    overlap or lie outside the file, and decompression bombs. Sizes and ratios are counted while
    decompressing, not taken from the headers, which a crafted archive can fake. Nothing is extracted."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelLoadError(f"{path}: archive has {len(infos)} members (limit {MAX_MEMBERS})",
                             hint="this is not a Keras model as Keras writes it")
    archive_bytes = path.stat().st_size
    compressed = 0
    for info in infos:
        if _bad_member_name(info.filename):
            raise ModelLoadError(f"{path}: archive member {info.filename!r} points outside the archive",
                                 hint="refusing a crafted archive; re-save the model with model.save()")
        if info.compress_type not in ALLOWED_METHODS:
            method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise ModelLoadError(f"{path}: archive member {info.filename!r} is compressed with {method}; Keras "
                                 "writes only stored or deflated members",
                                 hint="re-save the model with model.save(); edgepack does not decompress other methods")
        compressed += info.compress_size
    if compressed > archive_bytes:  # members sharing compressed bytes: the classic overlapping-file bomb
        raise ModelLoadError(f"{path}: archive members claim {compressed} compressed bytes in a {archive_bytes}-byte "
                             "file (overlapping members)", hint="refusing a crafted archive; re-save the model")
    total = 0
    for info in infos:
        limit = MAX_CONFIG_BYTES if info.filename == "config.json" else MAX_MEMBER_BYTES
        total += _counted_size(zf, info, min(limit, MAX_TOTAL_BYTES - total), path)


def _counted_size(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> int:
    size = 0
    ratio_cap = max(RATIO_FLOOR, MAX_RATIO * info.compress_size)
    try:
        with zf.open(info) as member:
            while chunk := member.read(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ModelLoadError(
                        f"{path}: archive member {info.filename!r} decompresses to more than "
                        f"{limit >> 20} MiB (edgepack's limit for a model that can become a TFLite file)",
                        hint="refusing a decompression bomb; a real model this large cannot be deployed")
                if size > ratio_cap:
                    raise ModelLoadError(
                        f"{path}: archive member {info.filename!r} inflates more than {MAX_RATIO}x its "
                        f"{info.compress_size} compressed bytes (edgepack's limit; Keras stores members uncompressed)",
                        hint="refusing a decompression bomb; re-save the model with model.save()")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ModelLoadError(f"{path}: corrupt archive member {info.filename!r} ({err})",
                             hint="re-save the model") from err
    return size


def read_member_json(path: Path, zf: zipfile.ZipFile, name: str) -> Any:
    """A JSON member, read with a bounded read (after :func:`check_archive`)."""
    with zf.open(name) as member:
        raw = member.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path}: {name} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    return json.loads(raw)


# -- Keras configs ---------------------------------------------------------------------------------
def _walk(config: Any) -> Iterator[dict]:
    if isinstance(config, dict):
        yield config
        for v in config.values():
            yield from _walk(v)
    elif isinstance(config, list):
        for v in config:
            yield from _walk(v)


def _is_keras_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _KERAS_MODULES)


def check_keras_config(path: Path, config: Any) -> None:
    """Refuse code stored in a Keras config: Lambda layers (bytecode) and objects from any module
    outside Keras (``os.system``, ``builtins.exec``, custom classes), before anything is built."""
    for node in _walk(config):
        module = node.get("module")
        name = node.get("class_name")
        if isinstance(module, str) and not _is_keras_module(module):
            what = node.get("config") if name == "function" and isinstance(node.get("config"), str) else name
            raise UnsafeModelError(
                f"{path}: the model config names {module}.{what}, which is not part of Keras; loading it "
                "would import and run that code", hint=_TRUST_HINT)
        if name in UNSAFE_LAYERS:
            cfg = node.get("config") if isinstance(node.get("config"), dict) else {}
            raise UnsafeModelError(f"{path}: layer {cfg.get('name', '?')} ({name}) holds Python code that would "
                                   "run on load", hint=_TRUST_HINT)


# -- SavedModels -----------------------------------------------------------------------------------
def saved_model_ops(folder: Path) -> dict[str, list[str]]:
    """Denylisted op type -> the functions (or ``graph``) holding it, over every meta graph."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb, pbtxt = folder / "saved_model.pb", folder / "saved_model.pbtxt"
    try:
        if pb.is_file():
            sm.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(pbtxt.read_text(encoding="utf-8"), sm)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, OSError) as err:
        raise ModelLoadError(f"{folder}: corrupt saved_model.pb ({str(err)[:200]})",
                             hint="re-export the SavedModel") from err
    found: dict[str, list[str]] = {}
    for mg in sm.meta_graphs:
        saver_fns = _saver_functions(mg)
        for node in mg.graph_def.node:
            if node.op in SAVED_MODEL_DENYLIST and node.op not in _SAVER_OPS:
                found.setdefault(node.op, []).append("graph")
        for fn in mg.graph_def.library.function:
            for node in fn.node_def:
                if node.op in SAVED_MODEL_DENYLIST:
                    if node.op in _SAVER_OPS and fn.signature.name in saver_fns:
                        continue
                    found.setdefault(node.op, []).append(fn.signature.name)
    return found


def _called_functions(nodes) -> set[str]:
    """Names of the functions that ``nodes`` call (PartitionedCall, If, While, ... attributes)."""
    names: set[str] = set()
    for node in nodes:
        for attr in node.attr.values():
            if attr.HasField("func"):
                names.add(attr.func.name)
            names.update(f.name for f in attr.list.func)
    return names


def _saver_functions(mg) -> set[str]:
    """Functions that only the checkpoint machinery calls: the saver's traced save/restore functions,
    when nothing but the saver_def's own graph nodes calls them."""
    candidates = {fn.signature.name for fn in mg.graph_def.library.function
                  if fn.signature.name.startswith(("__inference__traced_save", "__inference__traced_restore",
                                                   "__inference_save_", "__inference_restore_"))}
    saver_nodes = {mg.saver_def.save_tensor_name.split(":")[0], mg.saver_def.restore_op_name.split(":")[0]}
    roots = [n for n in mg.graph_def.node if n.name not in saver_nodes]
    called = _called_functions(roots)
    for fn in mg.graph_def.library.function:
        if fn.signature.name not in candidates:
            called |= _called_functions(fn.node_def)
    return candidates - called


def check_saved_model(folder: Path) -> None:
    ops = saved_model_ops(folder)
    if ops:
        op, where = sorted(ops.items())[0]
        more = f" (and {', '.join(sorted(ops)[1:4])})" if len(ops) > 1 else ""
        raise UnsafeModelError(
            f"{folder}: the SavedModel holds op {op}{more} in {where[0]}, which reads or writes files or runs "
            "code when the model is loaded or served", hint=_TRUST_HINT)
