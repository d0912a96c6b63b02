"""What the stages hand each other: the request, the stage results, and the records for the manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepack.calibration import Dataset
from edgepack.formats.base import LoadedModel
from edgepack.packaging.manifest import CalibrationInfo, Manifest, StageRecord
from edgepack.request import ConvertRequest
from edgepack.runtimes.tflm import ArenaMeasurement
from edgepack.targets import TargetSpec
from edgepack.targets.vela import VelaResult
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
    # Fine-tuning reports each epoch's held-out score here (label, epoch, metric, value) (the tuner's pruner listens)
    on_epoch: Callable[[str, int, str, float], None] | None = None
    # Optional stages add files to the bundle: relpath -> (data, role)
    extra_files: dict[str, tuple[bytes | str, str]] = field(default_factory=dict)
    optimization: dict[str, Any] | None = None  # --prune/--qat: before/after per technique (manifest "optimize")
    arena: ArenaRecord | None = None  # microcontroller targets: the TFLM arena, measured
    vela: VelaResult | None = None  # Ethos-U targets: the Vela-compiled model and its report
    firmware: FirmwareRecord | None = None  # microcontroller targets: the generated sources
    # ONNX: per "inputs"/"outputs", source name -> TensorInfo's source layout/shape fields
    source_io: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Per input name: the manifest's `preprocessing` spec and calibration data `statistics`
    input_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --prune/--qat: the model as loaded, kept when `loaded` is replaced by the optimized one
    original: LoadedModel | None = None
    manifest: Manifest | None = None
    # --max-drop/--min-sqnr/--min-agreement: the calibrated model (quantized again by the search), the
    # held-out calibration samples to evaluate on, and the search's record (manifest "budget")
    calibrated: Any = None
    heldout: Dataset | None = None
    budget: dict[str, Any] | None = None
    task_metric: Any = None  # --metric: the user's TaskMetric (validation.metrics), loaded by stage_prepare
    # the output folder as stage_prepare found it (packaging.bundle.output_identity): a --force run replaces only that
    output_seen: tuple[int, int] | None = None
    delegate: dict[str, Any] | None = None  # phone targets: measured XNNPACK coverage (manifest extras "delegate")
    app: dict[str, Any] = field(default_factory=dict)  # LiteRT targets: "signatures", "metadata" (manifest extras)
    camera: dict[str, Any] = field(default_factory=dict)  # --quantize uint8: input name -> CameraQuantization
    # the graph stage: ONNX (proto, node names, PrepareRecord) ready for onnx2tf, and the manifest's
    # "graph" section (what preparation did, frozen inputs, recurrent state pairs)
    prepared_onnx: Any = None
    graph: dict[str, Any] | None = None
    # the ptq stage: the rewritten float model the converter gets (``loaded`` stays the reference), and its record
    quantize_source: LoadedModel | None = None
    ptq: dict[str, Any] | None = None

    @property
    def arena_bytes(self) -> int | None:
        return self.arena.total if self.arena is not None else None

    def manifest_sections(self) -> dict[str, Any]:
        """The manifest's optional sections, from the typed results of the stages that ran."""
        out: dict[str, Any] = {}
        if self.graph is not None:
            out["graph"] = self.graph
        if self.optimization is not None:
            out["optimize"] = self.optimization
        if self.ptq is not None:
            out["ptq"] = self.ptq
        if self.arena is not None:
            out["tflm"] = self.arena.to_dict()
            if self.firmware is not None:
                out["tflm"]["firmware"] = {"files": list(self.firmware.files),
                                           "tensor_arena_size": self.firmware.tensor_arena_size}
        if self.vela is not None:
            out["vela"] = {"model": self.vela.file, **self.vela.report.to_dict(),
                           "validation": "validate runs the plain int8 model.tflite: the host cannot run "
                                         "the Ethos-U custom op"}
        out.update(self.app)
        if self.delegate is not None:
            out["delegate"] = self.delegate
        return out


@dataclass(frozen=True)
class ArenaRecord:
    """The TFLM tensor arena measured on the host, and the margin the target adds."""

    measurement: ArenaMeasurement
    margin_percent: int
    measured_with: str

    @property
    def total(self) -> int:
        return self.measurement.total

    def to_dict(self) -> dict[str, Any]:
        return {**self.measurement.to_dict(), "arena_margin_percent": self.margin_percent,
                "measured_with": self.measured_with}


@dataclass(frozen=True)
class FirmwareRecord:
    files: tuple[str, ...]
    tensor_arena_size: int


Stage = Callable[[PipelineState], "dict[str, Any] | None"]


