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
