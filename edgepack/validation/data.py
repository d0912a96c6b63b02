"""validate's data: any source, with the bundle's recorded preprocessing, in both layouts."""

from __future__ import annotations

from collections.abc import Sequence

from edgepack.calibration import Dataset, InputSpec
from edgepack.calibration.layout import relaxed_specs, to_layouts


def source_specs(tensors) -> list[InputSpec]:
    """Input specs in the source layout from manifest tensors (``TensorInfo``)."""
    return [InputSpec(t.name, tuple(d if isinstance(d, int) else None for d in (t.source_shape or t.shape)[1:]),
                      "float32") for t in tensors]


def bundle_views(ds: Dataset, specs: Sequence[InputSpec], tensors) -> tuple[Dataset, Dataset]:
    """``(source layout, TFLite layout)`` views of ``ds`` (opened with :func:`relaxed_specs`) for a
    bundle's input ``tensors``; samples are transposed batch by batch as they are read."""
    perms = {t.name: t.perm for t in tensors}
    source, tflite = to_layouts(ds, specs, {t.name: tuple(t.shape[1:]) for t in tensors}, perms)
    dtypes = {s.name: s.dtype for s in specs}
    tflite.check([InputSpec(t.name, tuple(t.shape[1:]), dtypes.get(t.name, "float32")) for t in tensors])
    return source, tflite


def read_bundle_data(bundle, manifest, data, specs: Sequence[InputSpec], *, preprocess: str | None = None,
                     recipe=None, label_column: str | None = None) -> tuple[Dataset, Dataset]:
    """``validate``'s data for a bundle whose inputs were transposed (ONNX): any source (``.npy``,
    ``.npz``, image folders, CSV, ``NAME=PATH``) with the recorded preprocessing (or ``preprocess``/
    ``recipe``), in the ONNX layout or the TFLite one; streamed, never read whole."""
    from edgepack.calibration.evaluate import evaluation_data

    ds = evaluation_data(bundle, manifest, data, relaxed_specs(specs), preprocess=preprocess, recipe=recipe,
                         label_column=label_column)
    return bundle_views(ds, specs, manifest.inputs)
