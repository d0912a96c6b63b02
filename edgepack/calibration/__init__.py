"""Calibration and evaluation data: one dataset object for calibration, validation and training.

Sources (``.npy``, ``.npz``, image folders, CSV, a mapping per input) are opened by
:func:`open_dataset`; :class:`Preprocess` is the recorded preprocessing; :mod:`.stats` gathers
statistics streaming.
"""

from edgepack.calibration.dataset import Dataset, InputSpec
from edgepack.calibration.preprocess import Preprocess, parse_spec
from edgepack.calibration.sources import open_dataset

__all__ = ["Dataset", "InputSpec", "Preprocess", "open_dataset", "parse_spec"]
