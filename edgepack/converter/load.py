"""Loading source models: detect the format from the bytes, never run code stored in the file.

Formats: Keras 3 ``.keras``, tf_keras ``.keras``, HDF5 ``.h5`` (tf_keras, or Keras 3's legacy
writer), a SavedModel directory. The Keras config is read and scanned for Lambda layers *before*
any Keras loader sees the file; loaders run in safe mode unless ``trust_model`` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgepack.calibration import InputSpec
from edgepack.converter import safety
from edgepack.errors import ModelLoadError, UnsafeModelError

log = logging.getLogger(__name__)


class ModelFormat(StrEnum):
    KERAS3 = "keras3"
    TF_KERAS = "tf_keras"
    TF_KERAS_H5 = "tf_keras_h5"
    KERAS3_H5 = "keras3_h5"
    SAVED_MODEL = "saved_model"
    ONNX = "onnx"


@dataclass
class LoadedModel:
    """A source model, loaded, with its I/O in the model's own order."""

    path: Path
    format: ModelFormat
    sha256: str
    inputs: list[InputSpec]
    output_names: list[str]
    model: Any = field(repr=False, default=None)  # keras / tf_keras Model, or a SavedModel signature

    @property
    def is_keras(self) -> bool:
        return self.format in (ModelFormat.KERAS3, ModelFormat.TF_KERAS, ModelFormat.TF_KERAS_H5,
                               ModelFormat.KERAS3_H5)

    @property
    def uses_keras3(self) -> bool:
        return self.format in (ModelFormat.KERAS3, ModelFormat.KERAS3_H5)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
        return h.hexdigest()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path) -> tuple[ModelFormat, dict | None]:
    """The model format and, for Keras files, the parsed model config.

    Both signatures are looked for over the whole file (a zip's directory is at its end, an HDF5
    superblock may sit at offset 512 or later), and a file that is both is refused: Keras picks its
    loader by the file name, so a polyglot would be checked as one format and loaded as the other.
    """
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return ModelFormat.SAVED_MODEL, None
        raise ModelLoadError(f"{path}: a directory without saved_model.pb is not a SavedModel",
                             hint="give a .keras/.h5/.onnx file or a SavedModel directory")
    is_zip, is_h5 = safety.signatures(path)
    if is_zip and is_h5:
        raise UnsafeModelError(f"{path}: the file is both a zip archive and an HDF5 file; refusing an "
                               "ambiguous model file", hint="re-save the model with model.save()")
    if is_zip:
        return _detect_keras_zip(path)
    if is_h5:
        return _detect_h5(path)
    if path.suffix.lower() == ".onnx":
        return ModelFormat.ONNX, None
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        raise ModelLoadError(f"{path}: corrupt model file (not a zip/HDF5 archive as {path.suffix} files are)",
                             hint="re-save the model with model.save()")
    raise ModelLoadError(f"{path}: unknown model format",
                         hint="edgepack reads .keras, .h5, SavedModel directories and .onnx")


def _detect_keras_zip(path: Path) -> tuple[ModelFormat, dict]:
    try:
        with zipfile.ZipFile(path) as zf:
            safety.check_archive(path, zf)
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"{path}: zip archive without config.json is not a .keras model")
            config = safety.read_member_json(path, zf, "config.json")
            meta = safety.read_member_json(path, zf, "metadata.json") if "metadata.json" in names else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError) as err:
        raise ModelLoadError(f"{path}: corrupt .keras archive ({err})", hint="re-save the model") from err
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: corrupt .keras archive (config.json is not a JSON object)",
                             hint="re-save the model")
    fmt = ModelFormat.KERAS3 if _major(meta.get("keras_version", "3")) >= 3 else ModelFormat.TF_KERAS
    return fmt, config


def _major(version: Any) -> int:
    """The major number of a Keras version string ("2.19.0" -> 2); unknown counts as Keras 3."""
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else 3


def _detect_h5(path: Path) -> tuple[ModelFormat, dict]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", b"2")
    except OSError as err:
        raise ModelLoadError(f"{path}: corrupt HDF5 file ({err})", hint="re-save the model") from err
    if raw is None:
        raise ModelLoadError(f"{path}: HDF5 file holds weights only (no model_config)",
                             hint="save the whole model with model.save('model.h5')")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if len(raw) > safety.MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path}: model_config is larger than {safety.MAX_CONFIG_BYTES >> 20} MiB")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: corrupt model_config in HDF5 file ({err})", hint="re-save the model") from err
    return (ModelFormat.KERAS3_H5 if _major(version) >= 3 else ModelFormat.TF_KERAS_H5), config


def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    """Load ``path`` for conversion and reference runs. Never runs code from the file unless trusted."""
    p = Path(path)
    fmt, config = detect_format(p)
    if config is not None and not trust_model:
        safety.check_keras_config(p, config)
    if fmt is ModelFormat.SAVED_MODEL and not trust_model:
        safety.check_saved_model(p)
    sha = file_sha256(p)
    if fmt is ModelFormat.ONNX:
        from edgepack.converter import onnx_model

        return onnx_model.load_onnx(p, sha)
    if fmt is ModelFormat.SAVED_MODEL:
        return _load_saved_model(p, sha)
    model = _load_keras(p, fmt, trust_model)
    inputs = [InputSpec(_input_name(t, i), tuple(t.shape[1:]), _dtype_name(t.dtype))
              for i, t in enumerate(model.inputs)]
    return LoadedModel(p, fmt, sha, inputs, _output_names(model), model)


def _output_names(model: Any) -> list[str]:
    """Output layer names in the model's order (Keras 3 Sequential has no ``output_names``)."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs):
        names = [getattr(getattr(o, "_keras_history", [None])[0], "name", None) or f"output_{i}"
                 for i, o in enumerate(model.outputs)]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return names


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _input_name(tensor: Any, i: int) -> str:
    name = getattr(tensor, "name", "") or f"input_{i}"
    return name.split(":")[0]


_SUFFIX = {ModelFormat.KERAS3: ".keras", ModelFormat.TF_KERAS: ".keras",
           ModelFormat.KERAS3_H5: ".h5", ModelFormat.TF_KERAS_H5: ".h5"}


def _load_keras(p: Path, fmt: ModelFormat, trust_model: bool) -> Any:
    """Keras chooses its loader from the file *name*; edgepack chose the format from the bytes and
    checked that format. A link named for the detected format makes Keras run the loader that was
    checked, and every loader runs inside Keras' safe-mode scope (tf_keras' HDF5 path ignores the
    ``safe_mode`` argument but honours the scope)."""
    with tempfile.TemporaryDirectory(prefix="edgepack-load-") as tmp:
        link = Path(tmp) / f"model{_SUFFIX[fmt]}"
        link.symlink_to(p.resolve())
        try:
            if fmt in (ModelFormat.KERAS3, ModelFormat.KERAS3_H5):
                import keras
                from keras.src.saving.serialization_lib import SafeModeScope

                with SafeModeScope(not trust_model):
                    return keras.saving.load_model(link, compile=False, safe_mode=not trust_model)
            import tf_keras
            from tf_keras.src.saving.serialization_lib import SafeModeScope

            with SafeModeScope(not trust_model):
                return tf_keras.models.load_model(str(link), compile=False, safe_mode=not trust_model)
        except Exception as err:  # Keras raises many types for bad files; wrap them all, keep the cause
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = "re-save the model, or pass --trust-model if it needs custom code you trust"
            if "Unknown layer" in first or "custom" in first.lower() or "Could not locate" in first:
                hint = "the model uses a custom class; edgepack loads only built-in layers"
            raise ModelLoadError(f"{p}: cannot load {fmt.value} model: {first[:300]}", hint=hint) from err


def _load_saved_model(p: Path, sha: str) -> LoadedModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(p))
    except Exception as err:  # corrupt protobufs and missing variables raise assorted TF errors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{p}: cannot load SavedModel: {first[:300]}") from err
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelLoadError(f"{p}: SavedModel has no 'serving_default' signature",
                             hint=f"signatures present: {', '.join(sigs) or 'none'}")
    fn = sigs["serving_default"]
    specs = fn.structured_input_signature[1]
    inputs = [InputSpec(name, tuple(spec.shape[1:]), spec.dtype.name) for name, spec in specs.items()]
    outputs = list(fn.structured_outputs)
    return LoadedModel(p, ModelFormat.SAVED_MODEL, sha, inputs, outputs, (loaded, fn))
