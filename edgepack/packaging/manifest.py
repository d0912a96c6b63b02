"""The bundle manifest: one schema, in one module.

``manifest.json`` is what a device app, a CI job or a later ``edgepack validate`` reads to know
what is in a bundle. It is versioned (:data:`SCHEMA_VERSION`), described by a JSON Schema shipped
next to this module (``manifest.schema.json``), and mirrored by the frozen dataclasses below.
``example_manifest.json`` is a documented example that the tests parse and validate, so the
docs cannot go stale.

Quantization fields are read back from the produced model, never echoed from the options.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from edgepack.errors import BundleError

# 1.1: the resolved request; 1.2: extras.optimize cluster / low_rank sections; 1.3: the accuracy budget's search;
# 1.4: budget.budget.metric (--metric) and task_metric* figures in the budget's candidates;
#      quantization.calibration.repaired_ranges
# 1.5: budget.confidence and the intervals of the chosen candidate's figures (chosen.metric.intervals)
# 1.6: quantization mode uint8; extras.signatures, extras.metadata (LiteRT metadata), extras.delegate (XNNPACK
#      coverage)
# 1.7: sample_axis per input/output; extras.graph (the ONNX graph stage and recurrent state pairs)
# 1.8: extras.ptq (the ptq stage: fused activations, equalized pairs, bias corrections, rounded layers)
SCHEMA_VERSION = "1.8"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SourceInfo:
    file: str
    format: str
    sha256: str
    path: str | None = None  # absolute path at conversion time, for validate's default reference


@dataclass(frozen=True)
class TargetInfo:
    name: str
    runtime: str
    delegate: str | None = None


@dataclass(frozen=True)
class CalibrationInfo:
    source: str
    samples: int
    available: int
    seed: int
    sha256: str
    # activation ranges TF's calibrator recorded wider than their values were, replaced (see
    # converter.requantize.repair_ranges); 0 when none were
    repaired_ranges: int = 0


@dataclass(frozen=True)
class QuantizationInfo:
    mode: str  # read back from the model's tensor types
    requested: str
    granularity: str | None  # "per-channel", "per-tensor" or None for float models
    calibration: CalibrationInfo | None = None


@dataclass(frozen=True)
class Artifact:
    path: str
    role: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the source model's name
    tflite_name: str
    index: int  # tensor index in the .tflite
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    shape_signature: list[int] | None = None
    # Source models with another layout (ONNX, channels first): the source tensor and how it maps.
    source_shape: list[int | str | None] | None = None  # as declared; str = symbolic dimension
    source_layout: str | None = None  # e.g. "NCHW" (the TFLite tensor is then NHWC); None = same layout
    perm: list[int] | None = None  # tflite tensor = source tensor.transpose(perm)
    # Inputs: what a device app does to raw data before invoke() (edgepack.calibration.preprocess), and
    # statistics of the calibration data after it (min/max/mean/std/percentiles)
    preprocessing: dict[str, Any] | None = None
    statistics: dict[str, Any] | None = None
    # 0: axis 0 is the batch (data: one sample = the tensor without it); None: no batch axis (recurrent
    # state; data: one sample = the whole tensor)
    sample_axis: int | None = 0


@dataclass(frozen=True)
class StageRecord:
    name: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    edgepack_version: str
    created: str
    source: SourceInfo
    target: TargetInfo
    quantization: QuantizationInfo
    artifacts: list[Artifact]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: dict[str, int]
    versions: dict[str, str]
    stages: list[StageRecord] = field(default_factory=list)
    labels: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # sections added by optional stages
    # The resolved convert request ("settings", as edgepack.request writes it) and the sha256 of every
    # input file it names ("files": role -> {path, sha256}), for `edgepack reproduce`.
    request: dict[str, Any] | None = None
    # --max-drop/--min-sqnr/--min-agreement: the budget, every candidate tried and the chosen one
    budget: dict[str, Any] | None = None
    schema_version: str = SCHEMA_VERSION

    def artifact(self, role: str) -> Artifact:
        for a in self.artifacts:
            if a.role == role:
                return a
        raise BundleError(f"manifest lists no {role} artifact")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        calib = d["quantization"].get("calibration")
        q = {**d["quantization"], "calibration": CalibrationInfo(**calib) if calib else None}
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw.update(
            source=SourceInfo(**d["source"]),
            target=TargetInfo(**d["target"]),
            quantization=QuantizationInfo(**q),
            artifacts=[Artifact(**a) for a in d["artifacts"]],
            inputs=[TensorInfo(**t) for t in d["inputs"]],
            outputs=[TensorInfo(**t) for t in d["outputs"]],
            stages=[StageRecord(**s) for s in d.get("stages", [])],
        )
        return cls(**kw)


def schema() -> dict[str, Any]:
    """The JSON Schema every manifest conforms to."""
    return json.loads(resources.files(__package__).joinpath("manifest.schema.json").read_text("utf-8"))


def example() -> dict[str, Any]:
    """The documented example manifest shipped with the package."""
    return json.loads(resources.files(__package__).joinpath("example_manifest.json").read_text("utf-8"))


def validate_dict(d: dict[str, Any], *, where: str = "manifest") -> None:
    """Raise :class:`BundleError` naming the first schema violation."""
    import jsonschema

    err = jsonschema.exceptions.best_match(_validator().iter_errors(d))
    if err is not None:
        loc = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        message = err.message
        if err.validator == "pattern" and loc.startswith("artifacts/"):  # say what the pattern means
            message = f"{err.instance!r} points outside the bundle (an absolute path or a '.'/'..' part)"
        raise BundleError(f"{where}: invalid at {loc}: {message}",
                          hint="re-create the bundle with this edgepack version") from err
    for which in ("inputs", "outputs"):  # NaN passes JSON Schema's bounds (every comparison with it is false)
        for pos, t in enumerate(d.get(which) or []):
            scale = t.get("scale") if isinstance(t, dict) else None
            if isinstance(scale, float) and not math.isfinite(scale):
                raise BundleError(f"{where}: invalid at {which}/{pos}/scale: {scale} is not a positive finite number",
                                  hint="re-create the bundle with this edgepack version")


@functools.lru_cache(maxsize=1)
def _validator():
    """One validator for the shipped schema: ``jsonschema.validate`` re-checks the schema itself on
    every call (~150 ms), which every ``inspect`` and ``validate`` would pay."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


MAX_JSON_BYTES = 64 << 20  # manifest.json, validation.json, sensitivity.json: far above what edgepack writes


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message ("a FIFO", "a directory", ...)."""
    import stat

    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: Path, label: str) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """``path`` opened for reading as a regular file, with its stat from the open descriptor: opened
    without blocking (a FIFO, even one swapped in after a check, cannot hang the open); one-line
    :class:`BundleError` naming ``label`` for anything else."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise BundleError(f"{label}: cannot read ({err.strerror})") from err
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{label} is {file_kind(st.st_mode)}, not a regular file")
        yield f, st


def read_json_file(path: Path, *, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file of a bundle: a regular file of at most ``limit`` bytes (checked before it is read, and
    while), parsed; one-line :class:`BundleError` for anything else (too large, not JSON, an integer past
    Python's digit limit, nesting past the recursion limit)."""
    with open_regular(path, str(path)) as (f, st):
        too_big = BundleError(f"{path}: larger than the {limit >> 20} MiB limit for a bundle's JSON files",
                              hint="re-create the bundle with 'edgepack convert'")
        if st.st_size > limit:
            raise too_big
        try:
            raw = f.read(limit + 1)
        except OSError as err:
            raise BundleError(f"{path}: cannot read ({err.strerror})") from err
    if len(raw) > limit:
        raise too_big
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # JSONDecodeError and int digit limits are ValueErrors
        first = (str(err).splitlines() or [""])[0][:200]
        raise BundleError(f"{path}: not valid JSON ({type(err).__name__}: {first})",
                          hint="re-create the bundle with 'edgepack convert'") from err


def read_manifest(bundle: str | Path) -> Manifest:
    """Load and schema-check ``bundle/manifest.json``."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_NAME}; is this an edgepack bundle?",
                          hint="create one with 'edgepack convert'")
    d = read_json_file(path)
    if not isinstance(d, dict):
        raise BundleError(f"{path}: not a manifest (a JSON {type(d).__name__}, not an object)")
    if str(d.get("schema_version", "")).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise BundleError(f"{path}: schema_version {d.get('schema_version')!r} is not supported "
                          f"(this edgepack reads {SCHEMA_VERSION})")
    validate_dict(d, where=str(path))
    manifest = Manifest.from_dict(d)
    _check_labels_artifact(manifest, path)
    return manifest


def _check_labels_artifact(manifest: Manifest, path: Path) -> None:
    """``labels`` names the bundle's labels artifact, nothing else: readers (validate's class names, the
    report's confusion table) open it by that name, and only artifacts are checked to lie inside the
    bundle with their recorded hash. A manifest pointing ``labels`` elsewhere would make them read any file."""
    if manifest.labels is None:
        return
    if not any(a.path == manifest.labels and a.role == "labels" for a in manifest.artifacts):
        raise BundleError(f"{path}: 'labels' names {manifest.labels!r}, which is not the bundle's labels artifact",
                          hint="re-create the bundle with 'edgepack convert'")


def check_model_tensors(manifest: Manifest, info: Any, where: str) -> None:
    """The manifest's inputs and outputs describe ``info`` (the bundle's :class:`~edgepack.tflite_model.TfliteInfo`):
    same tensor index, dtype, shape, scale and zero point. ``validate`` quantizes and dequantizes with
    the manifest's figures: a manifest edited to other scales would measure another model."""
    for which, tensors in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        for pos, t in enumerate(tensors):
            if not 0 <= t.index < len(info.tensors):
                raise BundleError(f"{where}: manifest {which}[{pos}] names tensor {t.index}, which the model "
                                  "does not have", hint="re-create the bundle with 'edgepack convert'")
            real = info.tensor(t.index)
            for field_name, mine, theirs in (("dtype", t.dtype, real.dtype), ("shape", list(t.shape), list(real.shape)),
                                             ("scale", t.scale, real.scale), ("zero_point", t.zero_point,
                                                                              real.zero_point)):
                if mine != theirs:
                    raise BundleError(f"{where}: manifest {which}[{pos}].{field_name} {mine!r} does not match the "
                                      f"model's ({theirs!r})", hint="re-create the bundle with 'edgepack convert'")
