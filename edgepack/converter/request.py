"""The immutable boundary between the CLI and the core: one frozen request per conversion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class QuantizeMode(StrEnum):
    INT8 = "int8"  # full integer, int8 input and output
    INT8_FLOAT_IO = "int8-float-io"  # integer internals, float32 input and output
    INT16X8 = "int16x8"  # int16 activations, int8 weights
    FLOAT16 = "float16"  # float16 weights
    DYNAMIC = "dynamic"  # int8 weights, float activations (dynamic range)
    NONE = "none"  # float32

    @property
    def needs_calibration(self) -> bool:
        return self in (QuantizeMode.INT8, QuantizeMode.INT8_FLOAT_IO, QuantizeMode.INT16X8)


@dataclass(frozen=True)
class ConvertRequest:
    model: Path
    output: Path
    quantize: QuantizeMode = QuantizeMode.INT8
    calibration: Path | None = None
    calibration_samples: int = 200
    seed: int = 0
    target: str = "generic"
    labels: Path | None = None
    force: bool = False
    trust_model: bool = False
    per_tensor: bool = False
    verbose: bool = False
