"""``edgepack reproduce``: the recorded request, checked before anything runs, and the comparison of the
re-made model with the original, byte for byte, then tensor by tensor.

A bundle travels between machines: its manifest is data, never permission. A recorded request that
asks for code to run (``model.trust``, ``budget.metric``) runs only when the person at the command
line passes the same flag; every input file it names is read only when its sha256 was recorded at
conversion time and still matches, at the recorded (absolute) location.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import BundleError, UsageError
from edgepack.request import ConvertRequest, parse_metric, refuse_permissions
from edgepack.validation.inputs import MAX_INPUT_BYTES, bounded_sha256

_SHA256 = re.compile(r"[0-9a-f]{64}")


def replay_request(src: Path, request: Any, output: Path, *, trust_model: bool = False,
                   metric: str | None = None) -> ConvertRequest:
    """The request recorded in ``src``'s manifest (``request``: its ``request`` section), to run into
    ``output``, after every check: permissions from the command line only (``trust_model``,
    ``metric``: ``FILE.py`` or ``FILE.py:FUNCTION``), every input file's recorded sha256 verified."""
    where = f"{src}/manifest.json request"
    if request is None:
        raise BundleError(f"{src}: the manifest holds no request (made by edgepack before 0.1's schema 1.1)",
                          hint="convert the model again with this edgepack")
    settings, files = request.get("settings"), request.get("files")
    if not isinstance(settings, Mapping) or not isinstance(files, Mapping):
        raise BundleError(f"{where}: 'settings' and 'files' must be objects", hint="convert the model again")
    refuse_permissions(settings, {"trust_model": trust_model, "metric": metric}, where)
    recorded_metric = (settings.get("budget") or {}).get("metric")
    if metric is not None and recorded_metric is None:
        raise UsageError("--metric: the bundle was made without a task metric", hint="leave --metric out")
    data = {k: v for k, v in settings.items()}
    out_part = settings.get("output") if isinstance(settings.get("output"), Mapping) else {}
    data["output"] = {**out_part, "path": str(output)}
    if recorded_metric is not None:
        if not isinstance(recorded_metric, str):
            raise BundleError(f"{where}: 'budget.metric' must be a string")
        head, _, tail = str(metric).rpartition(":")
        given = metric if head.endswith(".py") and tail.isidentifier() else \
            f"{metric}:{recorded_metric.rpartition(':')[2]}"  # FILE.py alone: the recorded function
        path, name = parse_metric(given)
        data["budget"] = {**settings["budget"], "metric": f"{path.resolve()}:{name}"}
    req = ConvertRequest.from_dict(data, where=where)
    trusted = bool(req.model.trust) and trust_model  # the record may ask; only the flag grants
    req = dataclasses.replace(req, model=dataclasses.replace(req.model, trust=trusted))
    check_inputs(where, req, files)
    return req


def check_inputs(where: str, req: ConvertRequest, files: Mapping[str, Any]) -> None:
    """Every file ``req`` reads has a recorded sha256, at the recorded absolute path (the metric: the
    file the command line named), and still matches it; read only as regular files within
    :data:`~edgepack.validation.inputs.MAX_INPUT_BYTES`."""
    for role, path in req.input_files().items():
        rec = files.get(role)
        sha = rec.get("sha256") if isinstance(rec, Mapping) else None
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise BundleError(f"{where}: the {role} file {path} has no sha256 recorded; refusing to read it",
                              hint="convert the model again with this edgepack")
        if role != "metric":
            if not path.is_absolute() or rec.get("path") != str(path):
                raise BundleError(f"{where}: the {role} file {path} is not the recorded location "
                                  f"{rec.get('path')!r}", hint="convert the model again with this edgepack")
            if not path.exists():
                raise BundleError(f"{where}: the {role} file {path} the bundle was made from no longer exists",
                                  hint="restore it to reproduce the bundle")
        if role == "metric":
            if bounded_sha256(path, "--metric", limit=MAX_INPUT_BYTES) != sha:
                raise UsageError(f"--metric {path} is not the metric file the bundle was made with (sha256 differs)",
                                 hint="give the file the manifest's files.metric names, unchanged")
        elif bounded_sha256(path, f"{where}: the {role} file", limit=MAX_INPUT_BYTES) != sha:
            raise BundleError(f"{where}: the {role} file {path} changed since the bundle was made (sha256 differs)",
                              hint="restore the original file to reproduce the bundle")


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
