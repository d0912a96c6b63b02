"""edgepack's LiteRT metadata writer without MediaPipe: round trip, what embedding keeps, options."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import BundleError, UsageError
from edgepack.packaging import metadata as md
from edgepack.request import build_request

META = {
    "name": "m", "description": "d", "version": "2", "author": "a", "license": "MIT",
    "subgraph_metadata": [{
        "name": "serving_default",
        "input_tensor_metadata": [{
            "name": "image", "description": "x",
            "content": {"content_properties": {"type": "ImageProperties", "color_space": 2,
                                               "default_size": {"width": 8, "height": 6}}},
            "process_units": [{"options": {"type": "NormalizationOptions", "mean": [0.5, 1.5], "std": [2.0, 4.0]}}],
            "stats": {"max": [1.0], "min": [-1.0]}}],
        "output_tensor_metadata": [{
            "name": "scores", "dimension_names": ["batch", "class"],
            "content": {"content_properties": {"type": "FeatureProperties"}},
            "associated_files": [{"name": "labels.txt", "description": "l", "type": 2, "locale": "en"}]}]}],
    "min_parser_version": "1.0.0",
}


def test_encode_decode_round_trip():
    buf = md.encode(META)
    assert buf[4:8] == b"M001"
    assert md.decode(buf) == META


def test_unknown_field_and_foreign_buffer_are_refused():
    with pytest.raises(ValueError, match="no field"):
        md.encode({**META, "colour": "red"})
    with pytest.raises(BundleError, match="M001"):
        md.decode(b"\x00" * 16)


def test_embed_keeps_signatures_and_entries_and_replaces_old_metadata(int8_bundle):
    from ai_edge_litert.interpreter import Interpreter

    model = (int8_bundle / "model.tflite").read_bytes()
    plain = md.embed(model, META, {}) if md.read(model) is None else model
    once = md.embed(plain, META, {"labels.txt": b"a\nb\n"})
    again = md.embed(once, {**META, "name": "n"}, {"labels.txt": b"c\n"})
    assert md.read(again)["name"] == "n" and md.read(again)["files"] == ["labels.txt"]
    assert md.associated_file(again, "labels.txt") == b"c\n"  # the old zip is gone, not stacked
    assert md.embed(once, META, {"labels.txt": b"a\nb\n"}) == once  # deterministic bytes
    before, after = Interpreter(model_content=model), Interpreter(model_content=again)
    assert after.get_signature_list() == before.get_signature_list()
    x = np.zeros(before.get_input_details()[0]["shape"], before.get_input_details()[0]["dtype"])
    outs = []
    for interp in (before, after):
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(*outs)


def test_metadata_options_from_recipe_and_flags(tmp_path):
    req = build_request({"model": "m.keras", "output": "o", "metadata": {"name": "Recipe", "license": "MIT"}},
                        {"author": "Flag"})
    assert (req.metadata.name, req.metadata.license, req.metadata.author, req.metadata.write) == (
        "Recipe", "MIT", "Flag", True)
    assert build_request({"model": "m", "output": "o", "metadata": False}, {}).metadata.write is False
    assert build_request({"model": "m", "output": "o"}, {"metadata": False}).metadata.write is False
    with pytest.raises(UsageError, match="metadata.colour"):
        build_request({"model": "m", "output": "o", "metadata": {"colour": "red"}}, {})


def test_cli_no_metadata_and_fields(tmp_path, keras3_model, calib_npy):
    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(out), "--calibration", str(calib_npy),
                                    "--target", "android-arm64", "--model-name", "Digits", "--license", "MIT"])
    assert res.exit_code == 0, res.output
    meta = md.read((out / "model.tflite").read_bytes())
    assert (meta["name"], meta["license"]) == ("Digits", "MIT")
    res = CliRunner().invoke(main, ["convert", str(keras3_model), "-o", str(tmp_path / "c"), "--calibration",
                                    str(calib_npy), "--target", "android-arm64", "--no-metadata"])
    assert res.exit_code == 0, res.output
    assert md.read((tmp_path / "c" / "model.tflite").read_bytes()) is None


def test_uint8_normalization_raw_pixels_cannot_carry_fails_before_converting(tmp_path, phone_classifier):
    res = CliRunner().invoke(main, ["convert", str(phone_classifier["model"]), "-o", str(tmp_path / "b"),
                                    "--calibration", str(phone_classifier["calib"]), "--quantize", "uint8", "-v",
                                    "--preprocess", "mean=-10,std=127.5"])
    assert res.exit_code == 2  # a usage error: options that contradict each other
    assert "error: --quantize uint8: the normalization (mean -10, std 127.5 in pixel units)" in res.output
    assert "stage: camera_check" in res.output and "stage: convert" not in res.output
    assert not (tmp_path / "b").exists()


def test_uint8_needs_one_normalization_for_all_channels():
    from edgepack.converter.uint8_io import camera_quantization

    with pytest.raises(UsageError, match="one mean and one std must hold for every channel"):
        camera_quantization({"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]})
    cam = camera_quantization({"scale": 1 / 255, "mean": [0.5], "std": [0.5]})  # pixels/255, then (x - .5) / .5
    assert (cam.scale, cam.zero_point) == (pytest.approx(1 / 127.5), 128)
    assert camera_quantization({"resize": [16, 16]}) is None
