"""The source model as the reference: its outputs over a dataset, in its own output order."""

from __future__ import annotations

import numpy as np

from edgepack.calibration import Dataset
from edgepack.formats.base import LoadedModel

_BATCH = 64


def as_converted(loaded: LoadedModel, manifest) -> LoadedModel:
    """The reference as the bundle was converted from it: ONNX inputs frozen by ``--input-value`` are
    fed their recorded values, and inputs without a sample axis take whole tensors."""
    import dataclasses

    from edgepack.calibration import InputSpec
    from edgepack.formats.base import ModelFormat

    frozen = (manifest.extras.get("graph") or {}).get("frozen_inputs") or {}
    if frozen and loaded.format is ModelFormat.ONNX:
        from edgepack.formats.onnx import with_input_values

        loaded = with_input_values(loaded, {k: v for k, v in frozen.items() if k in {s.name for s in loaded.inputs}})
    whole = {t.name: tuple(t.shape) for t in manifest.inputs if t.sample_axis is None}
    if whole:
        loaded = dataclasses.replace(loaded, inputs=[
            InputSpec(s.name, whole[s.name], s.dtype, sample_axis=None) if s.name in whole else s
            for s in loaded.inputs])
    return loaded


def reference_outputs(loaded: LoadedModel, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the source model (Keras, SavedModel, ONNX) for one chunk, its own output order, float32."""
    return loaded.run(chunk)


def run_reference(loaded: LoadedModel, data: Dataset) -> list[np.ndarray]:
    """Outputs of the source model for every sample of ``data`` (held in memory; tests, small data)."""
    dtypes = {s.name: s.dtype for s in loaded.inputs}
    results: list[list[np.ndarray]] = [[] for _ in loaded.output_names]
    for chunk in data.batches(_BATCH, dtypes):
        for i, o in enumerate(reference_outputs(loaded, chunk)):
            results[i].append(o)
    return [np.concatenate(r, axis=0) for r in results]
