"""Deployment targets as data (``*.toml`` profiles) and the checks a model must pass for one."""

from edgepack.targets.spec import QUANTIZE_MODES, TargetSpec, all_targets, available_targets, load_target

__all__ = ["QUANTIZE_MODES", "TargetSpec", "all_targets", "available_targets", "load_target"]
