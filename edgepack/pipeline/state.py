"""What the stages hand each other: the request, the stage results, and the records for the manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepack.calibration import Dataset
from edgepack.converter.formats.base import LoadedModel
from edgepack.packaging.manifest import CalibrationInfo, Manifest, StageRecord
from edgepack.request import ConvertRequest
from edgepack.targets import TargetSpec
from edgepack.tflite_model import TfliteModel


@dataclass
class PipelineState:
    """What the stages hand each other. Only the pipeline mutates it."""

    request: ConvertRequest
    target: TargetSpec | None = None
    loaded: LoadedModel | None = None
    calibration: Dataset | None = None
    calibration_info: CalibrationInfo | None = None
    tflite: bytes = b""
    info: TfliteModel | None = None
    labels: list[str] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    # Optional stages add files to the bundle (relpath -> (data, role)) and manifest sections.
    extra_files: dict[str, tuple[bytes | str, str]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    arena_bytes: int | None = None  # TFLM tensor arena, measured (microcontroller targets)
    vela_model: bytes | None = None  # Ethos-U targets: the Vela-compiled model
    # ONNX: per "inputs"/"outputs", source name -> TensorInfo's source layout/shape fields
    source_io: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Per input name: the manifest's `preprocessing` spec and calibration data `statistics`
    input_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --prune/--qat: the model as loaded, kept when `loaded` is replaced by the optimized one
    original: LoadedModel | None = None
    manifest: Manifest | None = None


Stage = Callable[[PipelineState], "dict[str, Any] | None"]


