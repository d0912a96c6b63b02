"""Every data source, read lazily, selected deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.calibration import Dataset, InputSpec, open_dataset
from edgepack.calibration.arrays import OffsetArray
from edgepack.calibration.preprocess import parse_spec
from edgepack.cli import data_option
from edgepack.errors import UsageError

from .conftest import write_images

IMG = [InputSpec("image", (16, 16, 3))]


def test_npy_is_read_by_offset_and_matches_numpy(tmp_path):
    x = np.random.default_rng(0).random((50, 4, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = open_dataset(tmp_path / "x.npy", [InputSpec("in", (4, 3))])
    assert isinstance(ds.sources["in"].array, OffsetArray) and len(ds) == 50
    got = np.concatenate([b["in"] for b in ds.batches(7)])
    np.testing.assert_array_equal(got, x)
    sub = ds.select(10, seed=3)
    idx = np.sort(np.random.default_rng(3).choice(50, size=10, replace=False))
    np.testing.assert_array_equal(sub.indices, idx)
    np.testing.assert_array_equal(np.concatenate([s["in"] for s in sub.samples()]), x[idx])
    assert sub.sha256() == ds.select(10, seed=3).sha256() != ds.select(10, seed=4).sha256()


def test_select_of_select_composes_and_keeps_labels(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(40, 1)
    ds = Dataset({"in": x}, np.arange(40) % 4)
    sub = ds.select(20, 0).select(5, 1)
    vals = np.concatenate([b["in"] for b in sub.batches(64)]).ravel().astype(int)
    np.testing.assert_array_equal(vals, sub.indices)
    np.testing.assert_array_equal(sub.labels, vals % 4)
    np.testing.assert_array_equal(sub.arrays["in"].ravel(), vals)


def test_npz_stored_compressed_and_labels(tmp_path):
    x = np.random.default_rng(1).random((12, 6), dtype=np.float32)
    np.savez(tmp_path / "a.npz", sensor=x, y=np.arange(12))
    np.savez_compressed(tmp_path / "b.npz", x=x, y=np.arange(12))
    for name in ("a.npz", "b.npz"):
        ds = open_dataset(tmp_path / name, [InputSpec("sensor", (6,))], require_labels=True)
        np.testing.assert_array_equal(ds.arrays["sensor"], x)
        np.testing.assert_array_equal(ds.labels, np.arange(12))
    assert isinstance(open_dataset(tmp_path / "a.npz", [InputSpec("sensor", (6,))]).sources["sensor"].array,
                      OffsetArray)


def test_flat_image_folder_is_unlabelled_and_preprocessed(tmp_path):
    write_images(tmp_path / "imgs", 4, size=(20, 24))
    write_images(tmp_path / "imgs" / "more", 2, size=(20, 24), fmt="png", seed=5)
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    pre = {"image": parse_spec("resize=16x16,scale=0.00392156862745098")}
    ds = open_dataset(tmp_path / "imgs", IMG, preprocess=pre)
    assert len(ds) == 6 and ds.labels is None
    batch = next(ds.batches(6))["image"]
    assert batch.shape == (6, 16, 16, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0.1
    assert ds.preprocessing["image"].color == "rgb"  # the decoding choice made explicit


def test_labelled_folder_classes_and_bundle_label_order(labelled_folder):
    ds = open_dataset(labelled_folder, IMG, preprocess={"image": parse_spec("resize=16x16")})
    assert ds.class_names == ["cat", "dog", "owl"]
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 5))
    again = open_dataset(labelled_folder, IMG, preprocess={"image": parse_spec("resize=16x16")},
                              class_names=["owl", "cat", "dog"])
    np.testing.assert_array_equal(again.labels, np.repeat([1, 2, 0], 5))


def test_grayscale_model_gets_grayscale_images(tmp_path):
    write_images(tmp_path / "g", 3, size=(8, 8))
    ds = open_dataset(tmp_path / "g", [InputSpec("image", (8, 8, 1))])
    assert next(ds.batches(3))["image"].shape == (3, 8, 8, 1)
    assert ds.preprocessing["image"].color == "grayscale"


def test_csv_header_label_column_and_reshape(tmp_path):
    rows = ["t0,t1,t2,t3,t4,t5,activity"] + [f"{i},{i + 1},{i + 2},{i + 3},{i + 4},{i + 5},{'walk' if i % 2 else 'run'}"
                                               for i in range(10)]
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n\n")
    ds = open_dataset(tmp_path / "w.csv", [InputSpec("window", (3, 2))], label_column="activity")
    assert len(ds) == 10 and ds.class_names == ["run", "walk"]
    np.testing.assert_array_equal(ds.labels, np.arange(10) % 2)
    first = next(ds.batches(2))["window"]
    np.testing.assert_array_equal(first[1], np.arange(1, 7, dtype=np.float32).reshape(3, 2))
    (tmp_path / "n.csv").write_text("1,2,0\n3,4,1\n")
    plain = open_dataset(tmp_path / "n.csv", [InputSpec("x", (2,))], label_column="-1")
    np.testing.assert_array_equal(plain.labels, [0, 1])
    np.testing.assert_array_equal(plain.arrays["x"], [[1, 2], [3, 4]])


def test_multi_input_mapping(tmp_path):
    write_images(tmp_path / "img", 5, size=(8, 8))
    np.save(tmp_path / "s.npy", np.ones((5, 6), np.float32))
    specs = [InputSpec("image", (8, 8, 3)), InputSpec("sensor", (6,))]
    ds = open_dataset({"image": tmp_path / "img", "sensor": tmp_path / "s.npy"}, specs)
    chunk = next(ds.batches(5))
    assert chunk["image"].shape == (5, 8, 8, 3) and chunk["sensor"].shape == (5, 6)
    assert ds.names == ["image", "sensor"]


def test_data_option_parsing(tmp_path):
    assert data_option(("calib.npy",), "--calibration") == tmp_path.__class__("calib.npy")
    got = data_option(("image=imgs", "sensor=s.npy"), "--calibration")
    assert {k: str(v) for k, v in got.items()} == {"image": "imgs", "sensor": "s.npy"}
    weird = tmp_path / "a=b.npy"
    weird.write_bytes(b"")
    assert data_option((str(weird),), "--data") == weird
    with pytest.raises(UsageError, match="NAME=PATH for each model input"):
        data_option(("a.npy", "b.npy"), "--calibration")
    assert data_option((), "--calibration") is None
