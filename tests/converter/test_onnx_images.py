"""An ONNX (NCHW) image model calibrated and validated from folders of PNG files with --preprocess.

The same data layer as the Keras path: image folders, the preprocessing spec recorded in the
manifest and applied again by ``validate``, samples transposed batch by batch for the TFLite layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack import api
from tests.converter.onnx_builders import classifier, separable_images

CLASSES = 3
SPEC = "resize=8x8,scale=0.00392157,layout=nchw"  # 16x16 PNGs -> the model's 3x8x8 input in [0, 1]


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """NCHW images in [0, 1] as 16x16 RGB PNGs (each pixel doubled), in class subfolders when labelled."""
    from PIL import Image

    for i, img in enumerate(images):
        hwc = np.repeat(np.repeat(img.transpose(1, 2, 0), 2, axis=0), 2, axis=1)
        sub = folder / f"class{labels[i]}" if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(hwc * 255).astype(np.uint8), "RGB").save(sub / f"img_{i:03d}.png")


@pytest.fixture(scope="module")
def png_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_png")
    classifier(d / "clf.onnx", classes=CLASSES)
    x, y = separable_images(90, CLASSES, seed=3)
    _write_pngs(d / "calib", x[:40])
    _write_pngs(d / "heldout", x[40:], y[40:])
    return d


def test_onnx_model_calibrates_from_png_folder_and_validates_from_labelled_folder(png_case, tmp_path):
    out = tmp_path / "bundle"
    res = api.convert(model=png_case / "clf.onnx", output=out, quantize="int8", calibration=png_case / "calib",
                      preprocess=SPEC)
    m = json.loads((out / "manifest.json").read_text())
    image = m["inputs"][0]
    assert image["perm"] == [0, 2, 3, 1] and image["shape"] == [1, 8, 8, 3]
    assert image["preprocessing"]["layout"] == "nchw" and image["preprocessing"]["resize"] == [8, 8]
    assert 0.0 <= image["statistics"]["min"] < image["statistics"]["max"] <= 1.0
    assert res.manifest.quantization.calibration.samples == 40
    # no --preprocess here: validate applies what the manifest recorded to the raw PNGs
    report = api.validate(bundle=out, data=png_case / "heldout", reference=png_case / "clf.onnx")
    assert report.samples == 50
    assert report.top1_agreement >= 0.96
    assert report.accuracy_reference is not None and report.accuracy_bundle is not None


def test_bundle_data_is_streamed_and_transposed_per_batch(png_case):
    """validate's view of an image folder reads files on demand and transposes only what it reads."""
    from edgepack.calibration import InputSpec
    from edgepack.calibration.layout import TransposedSource
    from edgepack.packaging.manifest import TensorInfo
    from edgepack.validation.data import read_bundle_data

    tensor = TensorInfo(name="image", tflite_name="image", index=0, shape=[1, 3, 8, 8], dtype="float32",
                        perm=[0, 3, 1, 2], source_shape=[1, 8, 8, 3], preprocessing=None)

    class Manifest:  # just the fields evaluation_data reads
        inputs = [tensor]
        labels = None

    spec = InputSpec("image", (8, 8, 3), "float32")
    src, tfl = read_bundle_data(png_case, Manifest, png_case / "heldout", [spec], preprocess="resize=8x8")
    assert isinstance(tfl.sources["image"], TransposedSource) and src.labels is not None
    batch = next(tfl.batches(4))["image"]
    raw = next(src.batches(4))["image"]
    assert batch.shape == (4, 3, 8, 8) and np.array_equal(batch, raw.transpose(0, 3, 1, 2))
