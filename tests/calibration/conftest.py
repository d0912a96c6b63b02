"""Fixtures for the data layer: real image files written with Pillow, tiny models built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

IMAGE_SHAPE = (16, 16, 3)
CLASSES = ("cat", "dog", "owl")


def write_images(folder: Path, count: int, *, size=(20, 24), fmt: str = "jpg", seed: int = 0,
                 mode: str = "RGB") -> list[Path]:
    """``count`` random images of ``size`` (height, width) saved as real ``fmt`` files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        shape = size if mode == "L" else (*size, 3)
        p = folder / f"img_{i:03d}.{fmt}"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(p)
        paths.append(p)
    return paths


def build_image_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE, name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASSES), name="logits"),
    ])


def build_two_input_model():
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3), name="image")
    sensor = keras.Input((6,), name="sensor")
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(image))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4)(sensor)])
    return keras.Model([image, sensor], keras.layers.Dense(3, name="logits")(x))


@pytest.fixture(scope="session")
def image_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img_model") / "image.keras"
    build_image_model().save(path)
    return path


@pytest.fixture(scope="session")
def two_input_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("two_input_model") / "two.keras"
    build_two_input_model().save(path)
    return path


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    """A flat folder of 40 JPEGs (20x24), larger than the model input."""
    d = tmp_path_factory.mktemp("jpegs")
    write_images(d, 40)
    return d


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory) -> Path:
    """ImageFolder layout: one subfolder per class, PNG and BMP files."""
    d = tmp_path_factory.mktemp("labelled")
    for k, name in enumerate(CLASSES):
        write_images(d / name, 5, fmt="png" if k % 2 else "bmp", seed=10 + k)
    return d


SPEC = "resize=16x16,mean=127.5,std=127.5"


@pytest.fixture(scope="session")
def int8_image_bundle(tmp_path_factory, image_model, jpeg_folder) -> Path:
    """The image model, int8, calibrated from the JPEG folder with SPEC, labels in labels.txt."""
    from edgepack import api

    d = tmp_path_factory.mktemp("img_bundle")
    labels = d / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    out = d / "bundle"
    api.convert(model=image_model, output=out, calibration=jpeg_folder, preprocess=SPEC, labels=labels,
                calibration_samples=32, seed=1)
    return out
