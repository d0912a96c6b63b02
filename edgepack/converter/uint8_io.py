"""uint8 I/O as a camera feeds it (``--quantize uint8``).

MediaPipe Tasks, Android ``Bitmap`` pipelines and Coral feed a uint8 image input the raw pixels and
apply no normalization. The converter sets the uint8 input's scale and zero point from the
calibration data's range, so pixel ``p`` means ``(p - zero_point) * scale`` — the normalization
only when the calibration images happened to span 0..255. edgepack sets them from the
preprocessing instead (``scale = scale_pre / std``, ``zero_point = mean / scale_pre``): the raw
pixel is then the quantized input. It is exact: the graph's first op is a QUANTIZE (uint8 → int8)
that requantizes from whatever the input tensor declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgepack.errors import UsageError
from edgepack.packaging.metadata import pixel_normalization


@dataclass(frozen=True)
class CameraQuantization:
    """The uint8 input quantization under which a raw pixel is the normalized value."""

    scale: float
    zero_point: int
    mean: float  # pixel-space normalization: x = (pixel - mean) / std
    std: float


def camera_quantization(pre: Mapping[str, Any] | None) -> CameraQuantization | None:
    """The camera input quantization for a preprocessing spec, or None without normalization.
    A mean that is not a whole pixel value (127.5) rounds half up, as uint8 pipelines do (128)."""
    norm = pixel_normalization(pre)
    if norm is None:
        return None
    means, stds = set(norm[0]), set(norm[1])
    if len(means) > 1 or len(stds) > 1:
        raise UsageError("--quantize uint8 feeds raw pixels, so one mean and one std must hold for every channel; "
                         f"the preprocessing has mean={sorted(means)} std={sorted(stds)}",
                         hint="use --quantize int8-float-io for per-channel normalization")
    mean, std = means.pop(), stds.pop()
    zero_point = int(mean + 0.5)
    if not 0 <= zero_point <= 255 or std <= 0:
        raise UsageError(f"--quantize uint8: the normalization (mean {mean:g}, std {std:g} in pixel units) does not "
                         "map 0..255 pixels to uint8", hint="use --quantize int8-float-io")
    return CameraQuantization(scale=1.0 / std, zero_point=zero_point, mean=mean, std=std)


def with_input_quantization(model: bytes, params: Mapping[int, CameraQuantization]) -> bytes:
    """``model`` with the given uint8 input tensors' scale and zero point replaced."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import Builder

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    sg = obj.subgraphs[0]
    for index, cam in params.items():
        t = sg.tensors[index]
        if t.type != schema.TensorType.UINT8 or index not in list(sg.inputs):
            raise UsageError(f"tensor {index} is not a uint8 model input")
        t.quantization.scale = [cam.scale]
        t.quantization.zeroPoint = [cam.zero_point]
    builder = Builder(len(model) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
