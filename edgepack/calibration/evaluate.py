"""Evaluation data for ``validate``: the same sources as calibration, preprocessed as the bundle records.

Class subfolders of an image folder (and CSV label names) map to class ids through the bundle's
``labels.txt`` when it has one, so folder order never silently shuffles the classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calibration import preprocess as pp
from edgepack.calibration.dataset import Dataset, InputSpec
from edgepack.calibration.sources import open_dataset, read_labels
from edgepack.calibration.stats import collector, compare_ranges

log = logging.getLogger(__name__)


def evaluation_preprocessing(specs: Sequence[InputSpec], tensors: Sequence[Any], *, spec: str | None,
                             recipe: str | Path | None) -> dict[str, pp.Preprocess | None]:
    """``--preprocess``/``--recipe`` when given, else what the manifest recorded per input."""
    recorded = {t.name: getattr(t, "preprocessing", None) for t in tensors}
    resolved = pp.resolve([s.name for s in specs], spec=spec, recipe=recipe, recorded=recorded)
    return {s.name: pp.with_default_dtype(resolved[s.name], s.dtype) for s in specs}


def bundle_class_names(bundle: Path, labels_file: str | None) -> list[str] | None:
    if not labels_file or not (bundle / labels_file).is_file():
        return None
    return read_labels(bundle / labels_file, what="bundle labels")


def evaluation_data(bundle: Path, manifest: Any, data: Path | Mapping[str, Path], specs: Sequence[InputSpec], *,
                    preprocess: str | None = None, recipe: str | Path | None = None,
                    label_column: str | None = None) -> Dataset:
    """Open and check ``data`` for the bundle's inputs, with the recorded preprocessing."""
    pre = evaluation_preprocessing(specs, manifest.inputs, spec=preprocess, recipe=recipe)
    applied = {k: p.spec_string() for k, p in pre.items() if p is not None}
    if applied and preprocess is None and recipe is None:
        log.info("--data: applying the bundle's recorded preprocessing %s (pass --preprocess none for "
                 "model-ready data)", applied)
    return open_dataset(data, specs, what="--data", preprocess=pre, label_column=label_column,
                             class_names=bundle_class_names(bundle, manifest.labels))


class RangeWatch:
    """Statistics of the data a pass reads anyway, compared with the calibration data's afterwards."""

    def __init__(self, tensors: Sequence[Any], expected: int) -> None:
        self.reference = {t.name: getattr(t, "statistics", None) for t in tensors}
        self.observe: Callable[[dict[str, np.ndarray]], None]
        self.observe, self._results = collector([t.name for t in tensors], expected)

    def warnings(self) -> list[str]:
        current = {k: v for k, v in self._results().items() if v["samples"]}
        return compare_ranges(current, self.reference)
