"""The Keras front-end: Keras 3 and tf_keras ``.keras`` archives and HDF5 files.

The config is read (bounded) and checked by :mod:`.safety` before any Keras loader sees the file.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from edgepack.calibration import InputSpec
from edgepack.errors import ModelLoadError
from edgepack.formats import safety
from edgepack.formats.base import LoadedModel, ModelFormat


def detect_zip(path: Path) -> tuple[ModelFormat, dict]:
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


def detect_h5(path: Path) -> tuple[ModelFormat, dict]:
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


def load_keras(p: Path, fmt: ModelFormat, sha: str, trust_model: bool) -> LoadedModel:
    model = _load_keras(p, fmt, trust_model)
    inputs = [_keras_input(t, i) for i, t in enumerate(model.inputs)]
    return LoadedModel(p, fmt, sha, inputs, _output_names(model), model)


def _keras_input(t: Any, i: int) -> InputSpec:
    """A fixed first dimension other than 1 (``Input(batch_shape=(2, 1, 8))``, an LSTM state) is part
    of the tensor, not a batch to set to 1: the input keeps its whole shape and has no sample axis."""
    shape = tuple(t.shape)
    if shape and isinstance(shape[0], int) and shape[0] > 1:
        return InputSpec(_input_name(t, i), shape, _dtype_name(t.dtype), sample_axis=None)
    return InputSpec(_input_name(t, i), shape[1:], _dtype_name(t.dtype))


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
