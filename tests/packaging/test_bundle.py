"""Bundles appear atomically or not at all; an old bundle survives any failure."""

from __future__ import annotations

import pytest

from edgepack import api
from edgepack.errors import BundleError, EdgepackError, InternalError, PackagingError
from edgepack.packaging import bundle as bundle_mod
from edgepack.packaging.bundle import verify_artifacts
from edgepack.packaging.manifest import read_manifest


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_failure_while_packaging_leaves_nothing(keras3_model, tmp_path, monkeypatch):
    real_add = bundle_mod.BundleWriter.add

    def add_then_fail(self, relpath, data, role):
        real_add(self, relpath, data, role)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.BundleWriter, "add", add_then_fail)
    with pytest.raises(EdgepackError):  # one line for the user, whatever the OSError
        api.convert(model=keras3_model, output=tmp_path / "out", quantize="none")
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_keeps_old_bundle(exc, keras3_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    api.convert(model=keras3_model, output=out, quantize="none")
    before = (out / "manifest.json").read_bytes()

    # the interrupt hits inside the bundle writer, after every file was staged
    real_write = bundle_mod.BundleWriter.write_text

    def write_then_interrupt(self, relpath, text):
        real_write(self, relpath, text)
        raise exc("stop")

    monkeypatch.setattr(bundle_mod.BundleWriter, "write_text", write_then_interrupt)
    with pytest.raises(exc if exc is KeyboardInterrupt else InternalError):
        api.convert(model=keras3_model, output=out, quantize="dynamic", force=True)
    assert (out / "manifest.json").read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert read_manifest(out).quantization.mode == "none"


def test_force_replaces_whole_bundle(keras3_model, tmp_path):
    out = tmp_path / "out"
    api.convert(model=keras3_model, output=out, quantize="none")
    (out / "stale.txt").write_text("old")
    api.convert(model=keras3_model, output=out, quantize="float16", force=True)
    assert not (out / "stale.txt").exists()
    assert read_manifest(out).quantization.mode == "float16"
    assert _leftovers(tmp_path) == []


def test_output_parent_must_exist(keras3_model, tmp_path):
    with pytest.raises(PackagingError, match="does not exist"):
        api.convert(model=keras3_model, output=tmp_path / "a" / "b", quantize="none")


def test_tampered_artifact_detected(int8_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_bundle, copy)
    m = read_manifest(copy)
    verify_artifacts(copy, m.artifacts)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the sha256"):
        verify_artifacts(copy, m.artifacts)


@pytest.mark.parametrize("restore_fails", [False, True])
def test_failed_swap_restores_or_names_the_old_bundle(tmp_path, monkeypatch, restore_fails):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"old")
    real_rename = bundle_mod.os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2 or (restore_fails and len(calls) == 3):  # staging -> out, then the way back
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(bundle_mod.os, "rename", rename)
    with pytest.raises(PackagingError) as err:
        with bundle_mod.atomic_bundle(out, force=True) as writer:
            writer.add("model.tflite", b"new", role="model")
    if restore_fails:
        backup = calls[0][1]
        assert f"the old bundle is in {backup}" in str(err.value)
        assert (backup / "model.tflite").read_bytes() == b"old"
    else:
        assert "cannot move the new bundle into" in str(err.value)
        assert (out / "model.tflite").read_bytes() == b"old"
        assert _leftovers(tmp_path) == []
