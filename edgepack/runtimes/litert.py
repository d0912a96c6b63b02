"""Running a bundle's model on the interpreters devices use, and the source model as reference.

Inputs are quantized and outputs dequantized with the manifest's scale and zero point, exactly as a
device app would do it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import numpy as np

from edgepack._native import capture_native_output
from edgepack.errors import RuntimeUnavailable
from edgepack.packaging.manifest import TensorInfo

_BATCH = 64


class Runtime(StrEnum):
    LITERT = "litert"
    TFLITE_RUNTIME = "tflite-runtime"


def camera_pixels(x: np.ndarray, t: TensorInfo) -> np.ndarray | None:
    """A uint8 image input whose quantization is its normalization (``--quantize uint8``): the raw
    pixels a camera pipeline (MediaPipe, Android ``Bitmap``) feeds, recovered from the normalized
    values — not ``round(x / scale) + zero_point``, which differs by one where the mean is 127.5."""
    from edgepack.packaging.metadata import pixel_normalization

    norm = pixel_normalization(getattr(t, "preprocessing", None)) if t.dtype == "uint8" and t.scale else None
    if norm is None or len(set(norm[0])) != 1 or len(set(norm[1])) != 1:
        return None
    mean, std = norm[0][0], norm[1][0]
    if not (np.isclose(t.scale, 1.0 / std, rtol=1e-6) and t.zero_point == int(mean + 0.5)):
        return None
    return np.clip(np.rint(np.asarray(x, np.float64) * std + mean), 0, 255).astype(np.uint8)


def quantize(x: np.ndarray, t: TensorInfo) -> np.ndarray:
    """float → the tensor's dtype, with its scale/zero point (no-op for float tensors); camera
    inputs get the raw pixels (:func:`camera_pixels`)."""
    if t.dtype in ("float32", "float16"):
        return np.asarray(x, dtype=t.dtype)
    pixels = camera_pixels(x, t)
    if pixels is not None:
        return pixels
    if t.scale is None or t.scale == 0:  # plain integer data (ids, indices): the tensor's own type
        x = np.asarray(x)
        return (np.rint(x) if x.dtype.kind == "f" else x).astype(t.dtype)
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

    Meant to run inside the isolated child (:mod:`edgepack.runtimes.isolated`): a C++ crash on a
    bad model must not take edgepack down.
    """

    def __init__(self, runtime: Runtime, model_path: Path, inputs: list[TensorInfo],
                 outputs: list[TensorInfo]) -> None:
        self.interp = make_interpreter(runtime, model_path)
        self.inputs, self.outputs = inputs, outputs
        self.dynamic_batch = all(t.shape_signature and t.shape_signature[0] == -1 and t.sample_axis is not None
                                 for t in inputs)
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
        for t in self.inputs:  # a tensor without a sample axis (recurrent state) is one whole sample
            data = batch[t.name].reshape(t.shape) if t.sample_axis is None else batch[t.name]
            self.interp.set_tensor(t.index, quantize(data, t))
        self.interp.invoke()
        return [dequantize(self.interp.get_tensor(t.index), t).reshape(1, *t.shape) if t.sample_axis is None
                else dequantize(self.interp.get_tensor(t.index), t) for t in self.outputs]


def constant_tensors(model: bytes) -> dict[str, tuple]:
    """Every constant tensor of ``model`` by name: (dtype, shape, (scales, zero points), real values)."""
    import tempfile

    from edgepack.tflite_model import read_tflite

    info = read_tflite(model)
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model)
        f.flush()
        interp = make_interpreter(Runtime.LITERT, Path(f.name))
        return _dequantized_constants(interp, info)


def _dequantized_constants(interp, info) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for t in info.tensors:
        if not t.constant:
            continue
        try:
            raw = np.array(interp.get_tensor(t.index))
        except ValueError:  # tensors the interpreter does not expose (e.g. packed int4)
            continue
        values = raw.astype(np.float64)
        if t.scales:
            scales = np.asarray(t.scales)
            zps = np.asarray(t.zero_points or [0] * len(t.scales))
            axis_shape = [1] * raw.ndim
            if len(scales) > 1 and raw.ndim:
                axis = next((i for i, d in enumerate(raw.shape) if d == len(scales)), 0)
                axis_shape[axis] = len(scales)
            values = (values - zps.reshape(axis_shape)) * scales.reshape(axis_shape)
        out[t.name] = (t.dtype, tuple(t.shape), (t.scales, t.zero_points), values)
    return out
