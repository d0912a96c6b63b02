"""Shared fixtures: tiny models built in code (no checked-in binaries, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

INPUT_SHAPE = (8, 8, 1)
CLASSES = 4


def _build(k, name: str):
    """A small conv classifier, deterministic weights; ``k`` is the keras or tf_keras module."""
    k.utils.set_random_seed(0)
    return k.Sequential([
        k.Input(INPUT_SHAPE, name="image"),
        k.layers.Conv2D(8, 3, padding="same", activation="relu"),
        k.layers.MaxPooling2D(),
        k.layers.Flatten(),
        k.layers.Dense(16, activation="relu"),  # 2,048 weights: enough for dynamic-range quantization
        k.layers.Dense(CLASSES, name="logits"),
    ], name=name)


def build_keras3(name: str = "tiny"):
    import keras

    return _build(keras, name)


def build_tf_keras(name: str = "tiny"):
    """The same classifier in tf_keras (Keras 2)."""
    import tf_keras

    return _build(tf_keras, name)


def save_model(kind: str, folder: Path) -> Path:
    """Save the tiny classifier as ``kind``: keras3, tf_keras, tf_keras_h5, saved_model."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "keras3":
        path = folder / "model.keras"
        build_keras3().save(path)
    elif kind == "tf_keras":
        path = folder / "model.keras"
        build_tf_keras().save(path)
    elif kind == "tf_keras_h5":
        path = folder / "model.h5"
        build_tf_keras().save(path)
    elif kind == "saved_model":
        path = folder / "saved_model"
        build_keras3().export(str(path), verbose=False)
    else:
        raise ValueError(kind)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def keras3_model(models_dir) -> Path:
    return save_model("keras3", models_dir / "keras3")


@pytest.fixture(scope="session")
def tf_keras_model(models_dir) -> Path:
    return save_model("tf_keras", models_dir / "tf_keras")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """calib.npy (120 samples in [0, 1]) and labelled.npz (x, y) for the tiny classifier."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.save(d / "calib.npy", rng.random((120, *INPUT_SHAPE), dtype=np.float32), allow_pickle=False)
    x = rng.random((64, *INPUT_SHAPE), dtype=np.float32)
    np.savez(d / "labelled.npz", x=x, y=rng.integers(0, CLASSES, size=64))
    return d


@pytest.fixture(scope="session")
def calib_npy(data_dir) -> Path:
    return data_dir / "calib.npy"


@pytest.fixture(scope="session")
def labelled_npz(data_dir) -> Path:
    return data_dir / "labelled.npz"


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, keras3_model, calib_npy) -> Path:
    """A full-int8 bundle of the Keras 3 classifier (shared, read-only)."""
    from edgepack import api

    out = tmp_path_factory.mktemp("bundles") / "int8"
    api.convert(model=keras3_model, output=out, calibration=calib_npy, labels=None)
    return out


@pytest.fixture(scope="session")
def target_bundle(tmp_path_factory, keras3_model, calib_npy):
    """Factory: the tiny classifier converted to full int8 for a target, built once per target."""
    from edgepack import api

    made: dict[str, Path] = {}

    def make(target: str) -> Path:
        if target not in made:
            made[target] = tmp_path_factory.mktemp("targets") / target
            api.convert(model=keras3_model, output=made[target], calibration=calib_npy, target=target)
        return made[target]

    return make


COLOR_LABELS = ("red", "green", "blue", "yellow")
_COLORS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 220], [230, 220, 50]], np.float32)


def colour_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic colour-pattern photos: a class colour, dimmed, with pixel noise; uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(_COLORS), n)
    x = _COLORS[y][:, None, None, :] * rng.uniform(0.6, 1.0, (n, 1, 1, 1)) + rng.normal(0, 25, (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="session")
def phone_classifier(tmp_path_factory) -> dict[str, Path]:
    """A small image classifier trained in a few seconds on colour patterns (input normalized with
    mean 127.5, std 127.5), a calibration folder and a test folder of PNGs, and labels.txt."""
    import keras
    from PIL import Image

    root = tmp_path_factory.mktemp("phone")
    keras.utils.set_random_seed(0)
    x, y = colour_images(600, 0)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(len(_COLORS), activation="softmax", name="scores")(h), name="colours")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit((x.astype(np.float32) - 127.5) / 127.5, y, epochs=15, verbose=0)
    model.save(root / "colours.keras")
    for folder, seed, n in (("calib", 1, 120), ("test", 2, 300)):
        (root / folder).mkdir()
        xs, ys = colour_images(n, seed)
        for i, (img, label) in enumerate(zip(xs, ys)):
            Image.fromarray(img).save(root / folder / f"{i:03d}_{COLOR_LABELS[label]}.png")
    (root / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    return {"model": root / "colours.keras", "calib": root / "calib", "test": root / "test",
            "labels": root / "labels.txt", "root": root}


@pytest.fixture(scope="session")
def phone_bundle(tmp_path_factory, phone_classifier):
    """Factory: the colour classifier converted for android-arm64 with --quantize MODE, built once per mode."""
    from edgepack import api

    made: dict[tuple, Path] = {}

    def make(mode: str, **extra) -> Path:
        key = (mode, tuple(sorted(extra.items())))
        if key not in made:
            made[key] = tmp_path_factory.mktemp("phone_bundles") / mode
            api.convert(model=phone_classifier["model"], output=made[key], calibration=phone_classifier["calib"],
                        quantize=mode, target="android-arm64", labels=phone_classifier["labels"],
                        preprocess="mean=127.5,std=127.5", **extra)
        return made[key]

    return make
