"""The source model as the reference: its outputs over a dataset, in its own output order."""

from __future__ import annotations

import numpy as np

from edgepack.calibration import Dataset
from edgepack.formats.base import LoadedModel

_BATCH = 64


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
