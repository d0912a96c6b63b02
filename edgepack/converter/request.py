"""The immutable boundary between the CLI and the core: one frozen request per conversion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


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
    # ONNX: static shapes for inputs with dynamic dimensions, ((name, (1, 3, 224, 224)), ...)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # ONNX: onnx2tf.convert() keywords forced by an expert, ((key, value), ...); turns the automatic
    # option fallbacks off
    onnx2tf_options: tuple[tuple[str, Any], ...] = ()
    # Calibration data per model input (multi-input models): ((name, path), ...); replaces `calibration`
    calibration_inputs: tuple[tuple[str, Path], ...] = ()
    preprocess: str | None = None  # "resize=96x96,mean=127.5,std=127.5" (or "none")
    recipe: Path | None = None  # preprocessing recipe file (TOML/JSON)
    label_column: str | None = None  # CSV calibration data: the column that holds labels
    # Optimization before conversion (issue 5): "channels:0.5", "sparsity:0.8", "2:4"; QAT; fine-tuning
    prune: str | None = None
    prune_norm: str = "l1"  # filter ranking for channel pruning: "l1" or "l2"
    prune_round: int = 1  # channel pruning keeps a multiple of this many channels per group
    prune_layers: tuple[str, ...] = ()  # fnmatch patterns of layer names to prune (default: all)
    keep_layers: tuple[str, ...] = ()  # fnmatch patterns of layer names never to prune
    qat: bool = False
    train_data: Path | None = None
    epochs: int = 10
    learning_rate: float | None = None  # fine-tuning Adam rate; None: 1e-3 after pruning, 1e-4 for QAT
    distill: bool = False  # learn the original model's outputs even when labels exist
    distribute: str | None = None  # "mirrored": tf.distribute.MirroredStrategy

    @property
    def calibration_data(self) -> Path | dict[str, Path] | None:
        """What to read calibration samples from: one path, or a path per input."""
        return dict(self.calibration_inputs) if self.calibration_inputs else self.calibration
