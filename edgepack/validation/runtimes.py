"""Running a bundle's model on the interpreters devices use, and the source model as reference.

Inputs are quantized and outputs dequantized with the manifest's scale and zero point, exactly as a
device app would do it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np

from edgepack._native import capture_native_output
from edgepack.calibration import Dataset
from edgepack.errors import RuntimeUnavailable
from edgepack.packaging.manifest import TensorInfo

_BATCH = 64


class Runtime(StrEnum):
    LITERT = "litert"
    TFLITE_RUNTIME = "tflite-runtime"


def quantize(x: np.ndarray, t: TensorInfo) -> np.ndarray:
    """float → the tensor's dtype, with its scale/zero point (no-op for float tensors)."""
    if t.dtype in ("float32", "float16") or t.scale is None or t.scale == 0:
        return np.asarray(x, dtype=t.dtype if t.dtype in ("float32", "float16") else None)
    info = np.iinfo(t.dtype)
    q = np.round(np.asarray(x, np.float64) / t.scale) + (t.zero_point or 0)
    return np.clip(q, info.min, info.max).astype(t.dtype)


def dequantize(q: np.ndarray, t: TensorInfo) -> np.ndarray:
    if t.scale is None or t.scale == 0 or t.dtype in ("float32", "float16"):
        return np.asarray(q, np.float32)
    return ((np.asarray(q, np.float32) - (t.zero_point or 0)) * t.scale).astype(np.float32)


def make_interpreter(runtime: Runtime, model_path: Path):
    try:
        if runtime is Runtime.LITERT:
            from ai_edge_litert.interpreter import Interpreter
        else:
            from tflite_runtime.interpreter import Interpreter
    except ImportError as err:
        raise RuntimeUnavailable(f"--runtime {runtime}: the interpreter is not installed ({err})",
                                 hint="pip install edgepack's dependencies") from err
    try:
        with capture_native_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on stderr
            return Interpreter(model_path=str(model_path), num_threads=2)
    except (ValueError, RuntimeError) as err:
        raise RuntimeUnavailable(f"--runtime {runtime} cannot load {model_path}: {err}") from err


class TfliteRunner:
    """An interpreter for one model: float chunks in, dequantized outputs (source order) out.

    Meant to run inside the isolated child (:mod:`edgepack.validation.isolated`): a C++ crash on a
    bad model must not take edgepack down.
    """

    def __init__(self, runtime: Runtime, model_path: Path, inputs: list[TensorInfo],
                 outputs: list[TensorInfo]) -> None:
        self.interp = make_interpreter(runtime, model_path)
        self.inputs, self.outputs = inputs, outputs
        self.dynamic_batch = all(t.shape_signature and t.shape_signature[0] == -1 for t in inputs)
        self.current: int | None = None

    def __call__(self, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(chunk.values())))
        step = n if self.dynamic_batch else 1
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, n, step):
            for i, out in enumerate(self._invoke({k: v[start:start + step] for k, v in chunk.items()})):
                parts[i].append(out)
        return [np.concatenate(p, axis=0) for p in parts]

    def _invoke(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(batch.values())))
        if n != self.current:
            if self.dynamic_batch:
                for t in self.inputs:
                    self.interp.resize_tensor_input(t.index, [n, *t.shape[1:]])
            with capture_native_output():  # the delegate announces itself on stderr here
                self.interp.allocate_tensors()
            self.current = n
        for t in self.inputs:
            self.interp.set_tensor(t.index, quantize(batch[t.name], t))
        self.interp.invoke()
        return [dequantize(self.interp.get_tensor(t.index), t) for t in self.outputs]


def run_tflite(runtime: Runtime, model_path: Path, inputs: list[TensorInfo], outputs: list[TensorInfo],
               data: Dataset, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Dequantized outputs (source order) for every sample of ``data``, run in an isolated child.

    Holds every output in memory: for tests and small data; ``validate`` streams instead."""
    from edgepack.validation.isolated import IsolatedRunner

    results: list[list[np.ndarray]] = [[] for _ in outputs]
    with IsolatedRunner(runtime.value, model_path, inputs, outputs) as run:
        for chunk in data.batches(_BATCH):
            for i, out in enumerate(run(chunk)):
                results[i].append(out)
            if progress:
                progress(len(next(iter(chunk.values()))))
    return [np.concatenate(r, axis=0) for r in results]


def reference_outputs(loaded, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the source model (Keras, SavedModel, ONNX) for one chunk, its own output order, float32."""
    from edgepack.converter.load import ModelFormat

    if loaded.format is ModelFormat.SAVED_MODEL:
        import tensorflow as tf

        from edgepack.converter.tflite import signature_name

        _, fn = loaded.model
        out = fn(**{signature_name(k): tf.constant(v) for k, v in chunk.items()})
        outs = [out[n] for n in loaded.output_names]
    elif loaded.format.value == "onnx":
        outs = loaded.model(chunk)
    else:
        args = [chunk[s.name] for s in loaded.inputs]
        out = loaded.model(args if len(args) > 1 else args[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        if isinstance(out, dict):
            outs = [out[n] for n in loaded.output_names]
    return [np.asarray(o, dtype=np.float32) for o in outs]


def run_reference(loaded, data: Dataset) -> list[np.ndarray]:
    """Outputs of the source model for every sample of ``data`` (held in memory; tests, small data)."""
    dtypes = {s.name: s.dtype for s in loaded.inputs}
    results: list[list[np.ndarray]] = [[] for _ in loaded.output_names]
    for chunk in data.batches(_BATCH, dtypes):
        for i, o in enumerate(reference_outputs(loaded, chunk)):
            results[i].append(o)
    return [np.concatenate(r, axis=0) for r in results]
