"""The SavedModel front-end; :func:`.safety.check_saved_model` gates it before anything runs."""

from __future__ import annotations

from pathlib import Path

from edgepack.calibration import InputSpec
from edgepack.errors import ModelLoadError
from edgepack.formats.base import LoadedModel, ModelFormat


def load_saved_model(p: Path, sha: str) -> LoadedModel:
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
