"""The calibration step of ``convert``: open the data, select samples, read them once for statistics.

Reading every selected sample here — before the converter sees any — is what guarantees that bad
data (NaN, broken images, ragged CSV rows, wrong shapes) stops the conversion with one line naming
the file and sample, and that nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.calibration import preprocess as pp
from edgepack.calibration.dataset import Dataset, InputSpec
from edgepack.calibration.progress import progress_bar
from edgepack.calibration.sources import open_dataset
from edgepack.calibration.stats import data_warnings, describe, scan

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    data: Dataset  # the selected samples (indices into the files; nothing loaded)
    available: int
    sha256: str
    source: str  # for the manifest: file/folder names, per input when several
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    heldout: Dataset | None = None  # samples kept out of calibration, to evaluate on (accuracy budget)

    @property
    def preprocessing(self) -> dict[str, dict[str, Any] | None]:
        return {k: (p.to_dict() if p is not None else None) for k, p in self.data.preprocessing.items()}


def source_name(data: Path | Mapping[str, Path]) -> str:
    if isinstance(data, Mapping):
        return ", ".join(f"{k}={Path(v).name}" for k, v in data.items())
    return Path(data).name


def input_preprocessing(inputs: Sequence[InputSpec], *, spec: str | None, recipe: str | Path | None
                        ) -> dict[str, pp.Preprocess | None]:
    """``--preprocess`` / ``--recipe`` per input, with the model's dtype made explicit."""
    resolved = pp.resolve([i.name for i in inputs], spec=spec, recipe=recipe)
    return {i.name: pp.with_default_dtype(resolved[i.name], i.dtype) for i in inputs}


def calibration_set(data: Path | Mapping[str, Path], inputs: Sequence[InputSpec], *, count: int, seed: int,
                    spec: str | None = None, recipe: str | Path | None = None,
                    label_column: str | None = None, min_samples: int = 100, target: str = "",
                    holdout: int = 0) -> CalibrationSet:
    """Open, check, select and scan the calibration data; log statistics (``-v``) and warnings.
    ``holdout`` samples are first set aside (seeded) and never calibrated on: that many when the data
    has them beyond ``count``, else as many as it has up to half of it."""
    pre = input_preprocessing(inputs, spec=spec, recipe=recipe)
    full = open_dataset(data, inputs, what="--calibration", preprocess=pre, label_column=label_column)
    heldout = None
    pool = full
    if holdout:
        n = len(full)
        h = holdout if n >= count + holdout else min(holdout, n // 2)
        if h < 2:
            from edgepack.errors import CalibrationError

            raise CalibrationError(f"--calibration: {n} samples are too few to hold some out for the accuracy budget",
                                   hint="give more calibration samples, or --eval-data")
        held = np.sort(np.random.default_rng(seed + 7919).choice(n, size=h, replace=False))
        heldout = full.take(held)
        pool = full.take(np.setdiff1d(np.arange(n), held))
    chosen = pool.select(count, seed)
    with progress_bar(len(chosen), "reading calibration data") as advance:
        result = scan(chosen, seed=seed, progress=advance)
    warnings = data_warnings(result.statistics, chosen.preprocessing)
    if len(chosen) < min_samples:
        warnings.insert(0, f"calibrating with {len(chosen)} samples, fewer than target {target}'s minimum of "
                           f"{min_samples}; int8 accuracy may suffer")
    for line in describe(result.statistics):
        log.info("calibration data: %s", line)
    for w in warnings:
        log.warning("%s", w)
    return CalibrationSet(data=chosen, available=len(full), sha256=result.sha256, source=source_name(data),
                          statistics=result.statistics, warnings=warnings, heldout=heldout)
