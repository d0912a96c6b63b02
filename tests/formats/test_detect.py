from __future__ import annotations

import pytest

from edgepack.errors import ModelLoadError, UnsafeModelError
from edgepack.formats.detect import ModelFormat, detect_format, load_model
from tests.conftest import save_model


@pytest.mark.parametrize("kind,fmt", [("keras3", ModelFormat.KERAS3), ("tf_keras", ModelFormat.TF_KERAS),
                                      ("tf_keras_h5", ModelFormat.TF_KERAS_H5),
                                      ("saved_model", ModelFormat.SAVED_MODEL)])
def test_detects_format_from_bytes_not_name(kind, fmt, tmp_path):
    path = save_model(kind, tmp_path)
    assert detect_format(path)[0] is fmt
    loaded = load_model(path)
    assert [i.name for i in loaded.inputs] == ["image"]
    assert loaded.inputs[0].shape == (8, 8, 1)
    # a SavedModel's names are its signature's (Keras' export names outputs output_0, ...)
    assert loaded.output_names == (["output_0"] if kind == "saved_model" else ["logits"])
    assert len(loaded.sha256) == 64


def test_directory_without_saved_model(tmp_path):
    with pytest.raises(ModelLoadError, match="without saved_model.pb"):
        load_model(tmp_path)


def test_h5_lambda_refused(tmp_path):
    import tf_keras

    m = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Lambda(lambda x: x + 1.0)])
    m.save(tmp_path / "lam.h5")
    with pytest.raises(UnsafeModelError, match="--trust-model"):
        load_model(tmp_path / "lam.h5")
