"""Every bad-data case: one line naming the file and the sample/row, exit code 1, nothing written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main

from .conftest import write_images


def _nan(d):
    x = np.random.default_rng(0).random((20, 16, 16, 3), dtype=np.float32)
    x[7, 3, 3, 1] = np.nan
    np.save(d / "nan.npy", x)
    return [str(d / "nan.npy")], "nan.npy: sample 7 contains NaN"


def _inf(d):
    x = np.random.default_rng(0).random((20, 16, 16, 3), dtype=np.float32)
    x[12, 0, 0, 0] = np.inf
    np.savez(d / "inf.npz", image=x)
    return [str(d / "inf.npz")], "inf.npz: sample 12 contains Inf"


def _object(d):
    np.save(d / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return [str(d / "obj.npy")], "obj.npy: the array holds pickled Python objects"


def _truncated_jpeg(d):
    paths = write_images(d / "imgs", 4, size=(16, 16))
    paths[2].write_bytes(paths[2].read_bytes()[:200])
    return [str(d / "imgs")], "file img_002.jpg (sample 2) is not a readable image"


def _not_an_image(d):
    write_images(d / "imgs", 3, size=(16, 16), fmt="png")
    (d / "imgs" / "img_001.png").write_text("this is text, not a PNG")
    return [str(d / "imgs")], "file img_001.png (sample 1) is not a readable image"


def _empty_folder(d):
    (d / "empty").mkdir()
    (d / "empty" / "readme.txt").write_text("no images here")
    return [str(d / "empty")], "empty: empty folder: no JPEG/PNG/BMP images found (1 other files)"


def _image_size(d):
    write_images(d / "big", 3, size=(20, 24))
    return [str(d / "big")], "file img_000.jpg decodes to shape (20, 24, 3), the model input needs (16, 16, 3)"


def _shape(d):
    np.save(d / "small.npy", np.zeros((10, 8, 8, 1), np.float32))
    return [str(d / "small.npy")], "small.npy: sample shape (8, 8, 1) does not match model input 'image' shape (16, 16, 3)"


def _truncated_npy(d):
    np.save(d / "cut.npy", np.zeros((10, 16, 16, 3), np.float32))
    data = (d / "cut.npy").read_bytes()
    (d / "cut.npy").write_bytes(data[: len(data) // 2])
    return [str(d / "cut.npy")], "cut.npy: file is truncated"


def _csv_ragged(d):
    (d / "r.csv").write_text("1,2,3\n4,5,6\n7,8\n")
    return [str(d / "r.csv")], "r.csv: line 3 has 2 columns, expected 3"


def _csv_text(d):
    (d / "t.csv").write_text("a,b,c\n1,2,3\n4,oops,6\n")
    return [str(d / "t.csv")], "t.csv: line 3, column 2 ('b'): 'oops' is not a finite number"


CASES = [_nan, _inf, _object, _truncated_jpeg, _not_an_image, _empty_folder, _image_size, _shape,
         _truncated_npy, _csv_ragged, _csv_text]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_calibration_data_one_line_nothing_written(case, image_model, tmp_path):
    data, expected = case(tmp_path)
    out = tmp_path / "out" / "bundle"
    out.parent.mkdir()
    args = ["convert", str(image_model), "-o", str(out)]
    for d in data:
        args += ["--calibration", d]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []  # no bundle, no staging folder left behind


def test_csv_rows_that_do_not_fit_the_input(image_model, tmp_path):
    (tmp_path / "w.csv").write_text("1,2,3\n4,5,6\n")
    result = CliRunner().invoke(main, ["convert", str(image_model), "-o", str(tmp_path / "b"),
                                       "--calibration", str(tmp_path / "w.csv")])
    assert result.exit_code == 1
    assert "sample shape (3,) does not match model input 'image' shape (16, 16, 3); each CSV row (3 values) " \
           "is reshaped to the input shape, which needs 768 values" in result.stderr
    assert not (tmp_path / "b").exists()


def test_multi_input_without_data_for_one_input(two_input_model, tmp_path):
    write_images(tmp_path / "img", 3, size=(8, 8))
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["convert", str(two_input_model), "-o", str(out),
                                  "--calibration", f"image={tmp_path / 'img'}"])
    assert r.exit_code == 1 and "--calibration: no data for model input 'sensor'" in r.stderr
    r = CliRunner().invoke(main, ["convert", str(two_input_model), "-o", str(out),
                                  "--calibration", str(tmp_path / "img")])
    assert r.exit_code == 1 and "one folder for a model with 2 inputs (image, sensor)" in r.stderr
    assert not out.exists()


def test_bad_validation_data_writes_no_report(int8_image_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_image_bundle, bundle)
    (bundle / "validation.json").unlink(missing_ok=True)
    write_images(tmp_path / "val" / "cat", 2, size=(20, 24))
    (tmp_path / "val" / "dog").mkdir()
    (tmp_path / "val" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    r = CliRunner().invoke(main, ["validate", str(bundle), "--data", str(tmp_path / "val")])
    assert r.exit_code == 1 and "file dog/broken.jpg (sample 2) is not a readable image" in r.stderr
    assert not (bundle / "validation.json").exists()
