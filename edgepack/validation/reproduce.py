"""Comparing a re-made model with the original: byte for byte, then tensor by tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class TensorDiff:
    name: str
    what: str  # "values", "shape", "dtype", "quantization", "only in original", "only in new"
    max_abs_diff: float | None = None  # in real (dequantized) units, for "values"
    elements_differing: int | None = None


@dataclass
class ReproduceReport:
    original: str
    new: str
    identical: bool
    original_bytes: int
    new_bytes: int
    differences: list[TensorDiff] = field(default_factory=list)
    other: str | None = None  # when the tensors all match but the bytes do not

    def to_dict(self) -> dict:
        return asdict(self)


def compare_models(original: bytes, new: bytes, *, original_name: str = "original",
                   new_name: str = "new") -> ReproduceReport:
    """Byte-identical, or which constant tensors differ (matched by name) and by how much."""
    report = ReproduceReport(original_name, new_name, original == new, len(original), len(new))
    if report.identical:
        return report
    a, b = _constants(original), _constants(new)
    for name in sorted(set(a) | set(b)):
        if name not in b:
            report.differences.append(TensorDiff(name, "only in original"))
        elif name not in a:
            report.differences.append(TensorDiff(name, "only in new"))
        else:
            diff = _diff(name, a[name], b[name])
            if diff is not None:
                report.differences.append(diff)
    if not report.differences:
        report.other = "all constant tensors match; the graph or its metadata differ (op order, names, buffers)"
    return report


def _constants(model: bytes) -> dict[str, tuple]:
    """Constant tensors by name: (dtype, shape, scales, zero points, real values)."""
    from edgepack.runtimes.litert import constant_tensors

    return constant_tensors(model)


def _diff(name: str, a: tuple, b: tuple) -> TensorDiff | None:
    (dt_a, shape_a, q_a, va), (dt_b, shape_b, q_b, vb) = a, b
    if dt_a != dt_b:
        return TensorDiff(name, "dtype")
    if shape_a != shape_b:
        return TensorDiff(name, "shape")
    if q_a != q_b:
        return TensorDiff(name, "quantization", float(np.max(np.abs(va - vb))) if va.shape == vb.shape else None)
    differing = int(np.count_nonzero(va != vb))
    if differing == 0:
        return None
    return TensorDiff(name, "values", float(np.max(np.abs(va - vb))), differing)
