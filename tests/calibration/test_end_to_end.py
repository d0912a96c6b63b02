"""The issue's "done when": convert from a folder of JPEGs, validate from a labelled folder, manifest records."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edgepack import api
from edgepack.cli import main
from edgepack.packaging.manifest import read_manifest

from .conftest import SPEC, write_images


def test_manifest_records_preprocessing_statistics_and_selection(int8_image_bundle, jpeg_folder):
    m = read_manifest(int8_image_bundle)
    (image,) = m.inputs
    assert image.preprocessing == {"resize": [16, 16], "resize_method": "bilinear", "color": "rgb",
                                   "mean": [127.5], "std": [127.5], "layout": "nhwc", "dtype": "float32"}
    st = image.statistics
    assert st["samples"] == 32 and -1.0 <= st["min"] < st["max"] <= 1.0 and 0.05 < st["std"] < 0.6
    assert set(st["percentiles"]) == {"p1", "p5", "p50", "p95", "p99"}
    cal = m.quantization.calibration
    assert (cal.source, cal.samples, cal.available, cal.seed) == (jpeg_folder.name, 32, 40, 1)
    assert m.outputs[0].preprocessing is None


def test_validate_from_labelled_folder_applies_recorded_preprocessing(int8_image_bundle, labelled_folder):
    r = CliRunner().invoke(main, ["validate", str(int8_image_bundle), "--data", str(labelled_folder), "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["samples"] == 15 and rep["accuracy_bundle"] is not None and rep["top1_agreement"] >= 0.8
    assert rep["outputs"][0]["cosine_similarity"] > 0.99 and rep["notes"] == []
    # without the recorded resize the 20x24 images do not fit: proof that it was applied above
    r = CliRunner().invoke(main, ["validate", str(int8_image_bundle), "--data", str(labelled_folder),
                                  "--preprocess", "none"])
    assert r.exit_code == 1 and "decodes to shape (20, 24, 3), the model input needs (16, 16, 3)" in r.stderr


def test_validate_warns_when_data_is_not_preprocessed_like_calibration(int8_image_bundle, tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "raw.npz", x=raw, y=np.zeros(8, int))
    rep = api.validate(bundle=int8_image_bundle, data=tmp_path / "raw.npz", preprocess="none")
    assert any("far outside the calibration data's" in n for n in rep.notes)
    # the same pixels with the recorded spec applied: no warning
    np.savez(tmp_path / "u8.npz", x=raw.astype(np.uint8), y=np.zeros(8, int))
    rep = api.validate(bundle=int8_image_bundle, data=tmp_path / "u8.npz")
    assert rep.notes == [] and rep.samples == 8


def test_cli_recipe_and_verbose_statistics(image_model, jpeg_folder, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('resize = "16x16"\nscale = 0.00392156862745098\n')
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["convert", str(image_model), "-o", str(out), "--calibration", str(jpeg_folder),
                                  "--recipe", str(recipe), "--calibration-samples", "10", "-v"])
    assert r.exit_code == 0, r.stderr
    assert "calibration data: input 'image': 10 samples, min 0" in r.stderr
    assert "fewer than target generic's minimum of 100" in r.stderr
    pre = read_manifest(out).inputs[0].preprocessing
    assert pre["scale"] == 0.00392156862745098 and pre["resize"] == [16, 16]


def test_multi_input_from_folder_and_csv(two_input_model, tmp_path):
    write_images(tmp_path / "img", 12, size=(8, 8))
    rows = [",".join(str(v) for v in np.random.default_rng(i).random(6).round(4)) for i in range(12)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "b"
    api.convert(model=two_input_model, output=out, preprocess=None,
                calibration={"image": tmp_path / "img", "sensor": tmp_path / "s.csv"})
    m = read_manifest(out)
    stats = {t.name: t.statistics for t in m.inputs}
    assert stats["image"]["max"] > 100 and stats["sensor"]["max"] <= 1.0  # raw pixels, sensor values
    assert m.quantization.calibration.source == "image=img, sensor=s.csv"
    assert {t.name: t.preprocessing["color"] if t.preprocessing else None for t in m.inputs} == \
        {"image": "rgb", "sensor": None}


def test_float_model_records_the_spec_without_calibrating(image_model, tmp_path):
    out = tmp_path / "f16"
    api.convert(model=image_model, output=out, quantize="float16", preprocess=SPEC)
    (image,) = read_manifest(out).inputs
    assert image.preprocessing["mean"] == [127.5] and image.statistics is None
