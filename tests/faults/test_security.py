"""Hostile model files: nothing stored in a model runs without --trust-model, archives are read
with caps, and names that reach generated C cannot inject lines.

Every payload here writes a marker file when it runs; each test asserts the marker is absent after
edgepack refused the file (one line, exit 1), and where it is cheap, a positive control shows the
payload really runs when trusted, so the test can fail.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import ModelLoadError, UnsafeModelError
from edgepack.formats import safety
from edgepack.formats.detect import load_model
from tests.conftest import build_keras3, build_tf_keras


def run(*args: str):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _payload_lambda(k, marker: Path):
    """A Lambda layer whose function writes ``marker`` (built from source so the path is a constant)."""
    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    return k.Sequential([k.Input((4,), name="x"), k.layers.Lambda(fn), k.layers.Dense(2)])


def _h5_with_lambda(path: Path, marker: Path, userblock: int = 0) -> None:
    import h5py
    import tf_keras

    model = _payload_lambda(tf_keras, marker)
    model.save(path.with_suffix(".plain.h5"))
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    src = h5py.File(path.with_suffix(".plain.h5"), "r")
    with h5py.File(path, "w", userblock_size=userblock or None) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
    src.close()


@pytest.fixture()
def marker(tmp_path):
    return tmp_path / "PAYLOAD_RAN"


def test_zip_and_hdf5_polyglot_is_refused_and_payload_never_runs(tmp_path, marker):
    """The reported hole: PK at byte 0, HDF5 superblock at 512 with a Lambda, a benign tf_keras
    .keras archive appended; named .h5 so tf_keras took its legacy HDF5 path."""
    bad = _polyglot(tmp_path, marker)
    assert safety.signatures(bad) == (True, True)

    code, _, err = run("convert", bad, "-o", tmp_path / "out", "--quantize", "none")
    assert code == 1 and "both a zip archive and an HDF5 file" in one_line(err)
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(UnsafeModelError):  # --trust-model does not make an ambiguous file acceptable
        load_model(bad, trust_model=True)


@pytest.mark.parametrize("suffix", [".h5", ".keras", ".bin"])
def test_lambda_in_hdf5_is_refused_whatever_the_name(tmp_path, marker, suffix):
    path = tmp_path / f"model{suffix}"
    _h5_with_lambda(path, marker)
    code, _, err = run("convert", path, "-o", tmp_path / "out", "--quantize", "none")
    assert code == 1 and "Lambda" in one_line(err) and "--trust-model" in err
    assert not marker.exists()


def test_lambda_payload_runs_only_when_trusted(tmp_path, marker):
    """Positive control: the same payload does run when the user says --trust-model."""
    path = tmp_path / "model.h5"
    _h5_with_lambda(path, marker)
    with pytest.raises(UnsafeModelError):
        load_model(path)
    assert not marker.exists()
    load_model(path, trust_model=True)  # runs the lambda while Keras rebuilds the graph
    assert marker.read_text() == "ran"


def _edit_keras_config(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json":
                cfg = json.loads(data)
                edit(cfg)
                data = json.dumps(cfg).encode()
            zout.writestr(info.filename, data)


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "exec"), ("subprocess", "Popen")])
def test_config_naming_a_foreign_module_is_refused_before_anything_is_built(tmp_path, module, name):
    benign = tmp_path / "benign.keras"
    build_keras3().save(benign)
    bad = tmp_path / "model.keras"

    def edit(cfg):
        layer = cfg["config"]["layers"][-1]
        layer["module"], layer["class_name"] = module, name

    _edit_keras_config(benign, bad, edit)
    code, _, err = run("convert", bad, "-o", tmp_path / "out", "--quantize", "none")
    line = one_line(err)
    assert code == 1 and f"{module}.{name}" in line and "not part of Keras" in line
    assert not (tmp_path / "out").exists()


def test_function_from_a_foreign_module_is_named(tmp_path):
    benign = tmp_path / "benign.keras"
    build_keras3().save(benign)
    bad = tmp_path / "model.keras"

    def edit(cfg):
        cfg["config"]["layers"][-1]["config"]["activation"] = {
            "module": "builtins", "class_name": "function", "config": "exec", "registered_name": "exec"}

    _edit_keras_config(benign, bad, edit)
    with pytest.raises(UnsafeModelError, match=r"builtins\.exec"):
        load_model(bad)


def _zip(path: Path, members: dict[str, bytes | int]) -> Path:
    """A zip whose int-valued members are that many spaces, streamed (a small file that inflates)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if isinstance(data, int):
                with zf.open(name, "w", force_zip64=True) as out:
                    chunk = b" " * (1 << 20)
                    for _ in range(data >> 20):
                        out.write(chunk)
            else:
                zf.writestr(name, data)
    return path


def test_config_bomb_is_refused_with_bounded_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_RATIO", 10**6)  # the size limit alone (spaces also trip the ratio limit)
    bomb = _zip(tmp_path / "bomb.keras", {"metadata.json": b'{"keras_version": "3.5.0"}',
                                          "config.json": safety.MAX_CONFIG_BYTES + (1 << 20)})
    assert bomb.stat().st_size < 1 << 20
    code, _, err = run("convert", bomb, "-o", tmp_path / "out", "--quantize", "none")
    line = one_line(err)
    assert code == 1 and "'config.json' decompresses to more than 64 MiB" in line


def test_weights_and_extra_member_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_MEMBER_BYTES", 8 << 20)  # the real cap is 2 GiB; same code path
    monkeypatch.setattr(safety, "MAX_RATIO", 10**6)  # the size limit alone (spaces also trip the ratio limit)
    for extra in ("model.weights.h5", "assets/extra.bin"):
        good = tmp_path / "good.keras"
        build_keras3().save(good)
        with zipfile.ZipFile(good) as zf:
            members: dict[str, bytes | int] = {n: zf.read(n) for n in zf.namelist()}
        members[extra] = 9 << 20
        bomb = _zip(tmp_path / "bomb.keras", members)
        with pytest.raises(ModelLoadError, match=f"'{extra}' decompresses to more than 8 MiB"):
            load_model(bomb)


@pytest.mark.parametrize("member", ["../x", "/abs", "assets/../../x", "assets\\..\\x"])
def test_traversal_member_names_are_refused(tmp_path, member):
    good = tmp_path / "good.keras"
    build_keras3().save(good)
    with zipfile.ZipFile(good) as zf:
        members: dict[str, bytes | int] = {n: zf.read(n) for n in zf.namelist()}
    members[member] = b"x"
    bad = _zip(tmp_path / "bad.keras", members)
    code, _, err = run("convert", bad, "-o", tmp_path / "out", "--quantize", "none")
    assert code == 1 and "points outside the archive" in one_line(err)
    assert not (tmp_path / "x").exists()


def _saved_model_writing(path: Path, marker: Path, where: str) -> Path:
    """A SavedModel whose serving function or resource initializer writes ``marker``."""
    import tensorflow as tf

    class Writer(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="edgepack_probe")

        def _initialize(self):
            tf.io.write_file(str(marker), "ran")

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            if where == "initializer":
                self.res = Writer()

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            if where == "signature":
                tf.io.write_file(str(marker), "ran")
            return {"y": x * 2.0}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    marker.unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("where", ["signature", "initializer"])
def test_saved_model_with_file_ops_is_refused_by_convert_and_validate(tmp_path, marker, where):
    sm = _saved_model_writing(tmp_path / "sm", marker, where)
    code, _, err = run("convert", sm, "-o", tmp_path / "out", "--quantize", "none")
    line = one_line(err)
    assert code == 1 and "op WriteFile" in line and "--trust-model" in line
    assert not marker.exists()
    # validate --reference goes through the same gate before any function runs
    good = tmp_path / "good.keras"
    build_keras3().save(good)
    assert run("convert", good, "-o", tmp_path / "bundle", "--quantize", "none")[0] == 0
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 8, 8, 1), np.float32), y=np.zeros(2, np.int64))
    code, _, err = run("validate", tmp_path / "bundle", "--data", tmp_path / "data.npz", "--reference", sm)
    assert code == 1 and "op WriteFile" in one_line(err)
    assert not marker.exists()


def test_saved_model_payload_runs_when_trusted(tmp_path, marker):
    """Positive control: tf.saved_model.load does run the initializer (why the gate exists)."""
    sm = _saved_model_writing(tmp_path / "sm", marker, "initializer")
    load_model(sm, trust_model=True)
    assert marker.read_text() == "ran"


def test_plain_saved_model_passes_the_gate(tmp_path):
    from tests.conftest import save_model

    sm = save_model("saved_model", tmp_path)
    assert safety.saved_model_ops(sm) == {}


def test_file_names_cannot_inject_lines_into_generated_c(tmp_path):
    from edgepack.packaging.firmware import FirmwareSpec, TensorInfo, firmware_files

    evil = "m\n#error injected\r\n// \\"
    t = TensorInfo(name="in\n#error x", tflite_name="in", index=0, shape=[1, 4], dtype="int8", scale=0.5,
                   zero_point=0)
    spec = FirmwareSpec(model_name=evil, model=b"\0" * 16, ops={"FULLY_CONNECTED": 1}, inputs=[t], outputs=[t],
                        measured_arena=100, arena_margin_percent=10, target="cortex-m4\n#error t",
                        note="n\n#error note", labels=["a\nb", 'q"\\'])
    for name, text in firmware_files(spec).items():
        for line in text.splitlines():
            assert not line.lstrip().startswith("#error"), (name, line)
            if line.lstrip().startswith("//"):
                assert not line.rstrip().endswith("\\"), (name, line)


def _polyglot(tmp_path, marker):
    bad = tmp_path / "poly.h5"
    _h5_with_lambda(bad, marker, userblock=512)
    benign = tmp_path / "benign_poly.keras"
    build_tf_keras().save(benign)
    data = bytearray(bad.read_bytes())
    data[:4] = safety.ZIP_MAGIC
    bad.write_bytes(bytes(data) + benign.read_bytes())
    return bad


def _lambda_h5(tmp_path, marker):
    path = tmp_path / "lambda.h5"
    _h5_with_lambda(path, marker)
    return path


def _foreign_module(tmp_path, marker):
    benign = tmp_path / "benign.keras"
    build_keras3().save(benign)
    bad = tmp_path / "os_system.keras"
    _edit_keras_config(benign, bad, lambda cfg: cfg["config"]["layers"][-1].update(module="os", class_name="system"))
    return bad


def _config_bomb(tmp_path, marker):
    return _zip(tmp_path / "bomb.keras", {"metadata.json": b'{"keras_version": "3.5.0"}',
                                          "config.json": safety.MAX_CONFIG_BYTES + (1 << 20)})


def _traversal(tmp_path, marker):
    good = tmp_path / "good.keras"
    build_keras3().save(good)
    with zipfile.ZipFile(good) as zf:
        members: dict[str, bytes | int] = {n: zf.read(n) for n in zf.namelist()}
    members["../x"] = b"x"
    return _zip(tmp_path / "traversal.keras", members)


def _saved_model_op(tmp_path, marker):
    return _saved_model_writing(tmp_path / "sm", marker, "initializer")


@pytest.mark.parametrize("build", [_polyglot, _lambda_h5, _foreign_module, _config_bomb, _traversal, _saved_model_op],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_refused_model_leaves_the_old_bundle_byte_identical(build, bundle_copy, tmp_path, private_tmpdir):
    """--force over an existing bundle: one line, exit 1, the old bundle untouched, nothing left
    behind, and the payload never ran."""
    from tests.faults.conftest import assert_error, leftovers, run_cli, snapshot

    marker = tmp_path / "PAYLOAD_RAN"
    model = build(tmp_path, marker)
    marker.unlink(missing_ok=True)
    before = snapshot(bundle_copy)
    res = run_cli(["convert", model, "-o", bundle_copy, "--quantize", "none", "--force"])
    assert_error(res, 1)
    assert snapshot(bundle_copy) == before
    assert leftovers(bundle_copy.parent, private_tmpdir) == []
    assert not marker.exists() and not (tmp_path.parent / "x").exists()
