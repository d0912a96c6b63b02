"""Loading source models: detect the format from the bytes, never run code stored in the file.

Formats: Keras 3 ``.keras``, tf_keras ``.keras``, HDF5 ``.h5`` (tf_keras, or Keras 3's legacy
writer), a SavedModel directory, ONNX. One front-end module per format (:mod:`.keras`,
:mod:`.saved_model`, :mod:`.onnx`), chosen through :data:`LOADERS`. The Keras config, the archive
and the SavedModel graph are checked by :mod:`.safety` before any loader sees the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgepack.errors import ModelLoadError, UnsafeModelError
from edgepack.formats import safety
from edgepack.formats.base import LoadedModel, ModelFormat, file_sha256

__all__ = ["LoadedModel", "ModelFormat", "detect_format", "file_sha256", "load_model"]


def detect_format(path: Path) -> tuple[ModelFormat, dict | None]:
    """The model format and, for Keras files, the parsed model config.

    Both signatures are looked for over the whole file (a zip's directory is at its end, an HDF5
    superblock may sit at offset 512 or later), and a file that is both is refused: Keras picks its
    loader by the file name, so a polyglot would be checked as one format and loaded as the other.
    """
    try:
        path.stat()
    except OSError as err:  # missing, a name too long, a loop of links: the system's word for it
        raise ModelLoadError(f"{path}: {(err.strerror or 'cannot be read').lower()}") from None
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
        from edgepack.formats.keras import detect_zip

        return detect_zip(path)
    if is_h5:
        from edgepack.formats.keras import detect_h5

        return detect_h5(path)
    if path.suffix.lower() == ".onnx":
        return ModelFormat.ONNX, None
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        raise ModelLoadError(f"{path}: corrupt model file (not a zip/HDF5 archive as {path.suffix} files are)",
                             hint="re-save the model with model.save()")
    raise ModelLoadError(f"{path}: unknown model format",
                         hint="edgepack reads .keras, .h5, SavedModel directories and .onnx")


def _keras(p: Path, fmt: ModelFormat, sha: str, trust: bool) -> LoadedModel:
    from edgepack.formats.keras import load_keras

    return load_keras(p, fmt, sha, trust)


def _saved_model(p: Path, fmt: ModelFormat, sha: str, trust: bool) -> LoadedModel:
    from edgepack.formats.saved_model import load_saved_model

    return load_saved_model(p, sha)


def _onnx(p: Path, fmt: ModelFormat, sha: str, trust: bool) -> LoadedModel:
    from edgepack.formats.onnx import load_onnx

    return load_onnx(p, sha)


# The front-end per detected format: adding a format is adding an entry here and a module.
LOADERS: dict[ModelFormat, Callable[[Path, ModelFormat, str, bool], LoadedModel]] = {
    ModelFormat.KERAS3: _keras, ModelFormat.TF_KERAS: _keras, ModelFormat.KERAS3_H5: _keras,
    ModelFormat.TF_KERAS_H5: _keras, ModelFormat.SAVED_MODEL: _saved_model, ModelFormat.ONNX: _onnx,
}


def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    """Load ``path`` for conversion and reference runs. Never runs code from the file unless trusted."""
    p = Path(path)
    fmt, config = detect_format(p)
    if config is not None and not trust_model:
        safety.check_keras_config(p, config)
    if fmt is ModelFormat.SAVED_MODEL and not trust_model:
        safety.check_saved_model(p)
    return LOADERS[fmt](p, fmt, file_sha256(p), trust_model)
