"""validate feeds a uint8 camera input the raw pixels, as MediaPipe and Android Bitmap pipelines do."""

from __future__ import annotations

import numpy as np

from edgepack.packaging.manifest import TensorInfo
from edgepack.runtimes.litert import quantize


def _tensor(scale: float, zero_point: int, pre: dict | None) -> TensorInfo:
    return TensorInfo(name="image", tflite_name="image", index=0, shape=[1, 256], dtype="uint8", scale=scale,
                      zero_point=zero_point, preprocessing=pre)


def test_camera_input_gets_the_raw_pixels():
    pixels = np.arange(256, dtype=np.float32)[None]
    x = (pixels - 127.5) / 127.5  # what the recorded preprocessing made of them
    cam = _tensor(1 / 127.5, 128, {"mean": [127.5], "std": [127.5]})
    np.testing.assert_array_equal(quantize(x, cam), pixels.astype(np.uint8))
    # round(x / scale) + zero_point would be off by one on every other pixel (round half to even)
    naive = np.round(x.astype(np.float64) / cam.scale) + 128
    assert (naive != pixels).sum() > 100


def test_other_uint8_inputs_are_quantized_as_before():
    x = np.linspace(-1, 1, 256, dtype=np.float32)[None]
    calibrated = _tensor(2 / 255, 127, {"mean": [127.5], "std": [127.5]})  # the converter's own parameters
    expected = np.clip(np.round(x.astype(np.float64) / calibrated.scale) + 127, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(quantize(x, calibrated), expected)
    np.testing.assert_array_equal(quantize(x, _tensor(2 / 255, 127, None)), expected)
