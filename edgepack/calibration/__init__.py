"""Calibration and evaluation data: one dataset object for calibration, validation and training."""

from edgepack.calibration.dataset import Dataset, InputSpec

__all__ = ["Dataset", "InputSpec"]
