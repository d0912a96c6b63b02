"""The preprocessing spec: parsing, recipes, applying, recording."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgepack.calibration.preprocess import Preprocess, load_recipe, parse_spec, resolve
from edgepack.errors import UsageError


def test_parse_the_issue_example_and_round_trip():
    p = parse_spec("resize=96x96,mean=127.5,std=127.5")
    assert p.resize == (96, 96) and p.mean == (127.5,) and p.std == (127.5,)
    assert p.to_dict() == {"resize": [96, 96], "resize_method": "bilinear", "mean": [127.5], "std": [127.5]}
    assert parse_spec(p.spec_string()) == p
    assert Preprocess.from_dict(p.to_dict()) == p


def test_parse_every_key():
    p = parse_spec("resize=32,resize_method=nearest,crop=28x24,color=BGR,scale=0.5,"
                   "mean=1:2:3,std=4:5:6,layout=nchw,dtype=float16")
    assert p.resize == (32, 32) and p.crop == (28, 24) and p.color == "bgr" and p.layout == "nchw"
    assert p.mean == (1.0, 2.0, 3.0) and p.std == (4.0, 5.0, 6.0) and p.dtype == "float16"
    assert parse_spec("none") is None


@pytest.mark.parametrize("spec, needle", [
    ("resize=big", "not HEIGHTxWIDTH"),
    ("mean=abc", "not a number"),
    ("std=0", "divide by zero"),
    ("color=purple", "not one of rgb, bgr, grayscale"),
    ("sharpen=2", "unknown preprocessing key 'sharpen'"),
    ("resize", "not KEY=VALUE"),
    ("scale=1,scale=2", "given twice"),
])
def test_bad_specs_name_the_problem(spec, needle):
    with pytest.raises(UsageError, match=needle) as info:
        parse_spec(spec)
    assert "--preprocess" in str(info.value) and "\n" not in str(info.value)


def test_image_steps_resize_crop_color_then_numbers():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    p = parse_spec("resize=20x30,crop=10x10,color=bgr,mean=100,std=50")
    arr = p.image_to_array(Image.fromarray(rgb))
    assert arr.shape == (10, 10, 3)
    assert (arr[..., 2] == 200).all() and (arr[..., 0] == 0).all()  # red moved to the last channel
    out = p.apply_numeric(arr[None], "float32")
    assert out.dtype == np.float32 and np.allclose(out[0, ..., 2], 2.0) and np.allclose(out[0, ..., 0], -2.0)
    gray = parse_spec("color=grayscale").image_to_array(Image.fromarray(rgb))
    assert gray.shape == (40, 60, 1)


def test_layout_nchw_and_implied_range():
    p = parse_spec("scale=0.00392156862745098,layout=nchw")
    out = p.apply_numeric(np.full((2, 4, 5, 3), 255, np.uint8), "float32")
    assert out.shape == (2, 3, 4, 5) and np.allclose(out, 1.0)
    assert parse_spec("mean=127.5,std=127.5").implied_range() == (-1.0, 1.0)
    assert parse_spec("resize=8x8").implied_range() is None
    # per-channel mean/std (ImageNet's): each channel's own ends, the widest over channels (crashed before)
    low, high = parse_spec("mean=123.675:116.28:103.53,std=58.395:57.12:57.375").implied_range()
    assert low == pytest.approx(-123.675 / 58.395) and high == pytest.approx((255 - 103.53) / 57.375)


def test_recipe_toml_and_json_per_input(tmp_path):
    toml = tmp_path / "recipe.toml"
    toml.write_text('resize = "16x16"\nmean = 127.5\nstd = 127.5\n[inputs.sensor]\nscale = 0.1\n')
    common, per = load_recipe(toml)
    assert common == {"resize": "16x16", "mean": 127.5, "std": 127.5} and per == {"sensor": {"scale": 0.1}}
    got = resolve(["image", "sensor"], recipe=toml)
    assert got["image"].resize == (16, 16) and got["sensor"].scale == 0.1 and got["sensor"].resize == (16, 16)
    js = tmp_path / "recipe.json"
    js.write_text('{"inputs": {"image": {"resize": [8, 8], "color": "grayscale"}}}')
    got = resolve(["image", "sensor"], recipe=js)
    assert got["image"] == Preprocess(resize=(8, 8), color="grayscale") and got["sensor"] is None
    # --preprocess wins over the recipe, and the recipe over what a manifest recorded
    assert resolve(["image"], spec="scale=2", recipe=js)["image"] == Preprocess(scale=2.0)
    assert resolve(["image"], recorded={"image": {"scale": 3}})["image"] == Preprocess(scale=3.0)


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("resize = [")
    with pytest.raises(UsageError, match="not valid TOML"):
        resolve(["image"], recipe=bad)
    other = tmp_path / "other.json"
    other.write_text('{"inputs": {"audio": {"scale": 1}}}')
    with pytest.raises(UsageError, match="no model input named 'audio'"):
        resolve(["image"], recipe=other)
    with pytest.raises(UsageError, match="no such file"):
        resolve(["image"], recipe=tmp_path / "missing.toml")
