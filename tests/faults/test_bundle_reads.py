"""What edgepack reads because a bundle says so (issue 20, items 11, 12 and 15): the source model
``validate`` follows, the JSON files ``inspect`` reads, the quantization figures ``validate`` uses;
and two concurrent ``--force`` converts into one folder."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from edgepack import api
from edgepack.errors import BundleError, PackagingError
from edgepack.packaging.bundle import verify_artifacts
from edgepack.packaging.manifest import MAX_JSON_BYTES, read_manifest
from tests.faults.conftest import assert_contained, assert_error, leftovers, run_cli, run_limited, snapshot


def _report(case: str, result) -> None:
    print(f"\nCASE {case}: exit {result.code}, {result.peak_rss / 2**20:.0f} MiB, {result.seconds:.1f} s: "
          f"{result.stderr.strip()[:160]}")


def _edit_manifest(bundle, edit) -> None:
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


# -- item 11: validate follows source.path only to the recorded regular file ------------------------------
def test_validate_refuses_a_fifo_as_the_recorded_source(bundle_copy, tmp_path, labelled_npz):
    """A FIFO at the manifest's source.path hung validate forever."""
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    _edit_manifest(bundle_copy, lambda d: d["source"].update(path=str(fifo)))
    before = snapshot(bundle_copy)
    result = run_limited(["validate", bundle_copy, "--data", labelled_npz])
    _report("validate source FIFO", result)
    assert_contained(result, 1, "source model", "a FIFO", "--reference")
    assert snapshot(bundle_copy) == before and not leftovers(tmp_path, bundle_copy.parent)


@pytest.mark.parametrize("target, fragment", [("/dev/zero", "a character device"), ("dir", "a directory"),
                                              ("other", "sha256 differs")])
def test_validate_follows_source_path_only_to_the_recorded_file(bundle_copy, tmp_path, labelled_npz, target, fragment):
    """``/dev/zero`` grew to 4.3 GB; a directory or another file is not the model the bundle was made from."""
    if target == "dir":
        target = tmp_path / "dir"
        target.mkdir()
    elif target == "other":
        target = tmp_path / "other.keras"
        target.write_bytes(b"not the model")
    _edit_manifest(bundle_copy, lambda d: d["source"].update(path=str(target)))
    res = run_cli(["validate", bundle_copy, "--data", labelled_npz])
    assert_error(res, 1, fragment, "--reference")


# -- item 12: capped JSON reads, bad numbers ------------------------------------------------------------------
def test_inspect_refuses_a_huge_manifest_without_reading_it(bundle_copy):
    """A 3 GB sparse manifest.json reached 3.1 GB RSS."""
    with open(bundle_copy / "manifest.json", "r+b") as f:
        f.truncate(3 << 30)
    result = run_limited(["inspect", bundle_copy])
    _report("inspect 3 GB manifest", result)
    assert_contained(result, 1, "manifest.json", f"{MAX_JSON_BYTES >> 20} MiB limit")
    assert result.peak_rss < 200 << 20  # nothing of it was read


@pytest.mark.parametrize("name", ["manifest.json", "validation.json"])
def test_a_number_of_100000_digits_is_one_line(bundle_copy, name):
    """Python's int-str digit limit raised ValueError: an internal error."""
    path = bundle_copy / name
    if name == "manifest.json":
        path.write_text(path.read_text().replace('"bytes": ', '"bytes": ' + "9" * 100_000 + ", \"x\": ", 1))
    else:
        path.write_text('{"samples": ' + "9" * 100_000 + "}")
    res = run_cli(["inspect", bundle_copy])
    assert_error(res, 1, name, "not valid JSON", "digits")


# -- item 15: quantization figures are the model's ----------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, -0.5, math.inf, math.nan])
def test_schema_refuses_scales_that_are_not_positive_finite(bundle_copy, scale):
    _edit_manifest(bundle_copy, lambda d: d["inputs"][0].update(scale=scale))
    with pytest.raises(BundleError, match="inputs/0/scale"):
        read_manifest(bundle_copy)


def test_validate_refuses_scales_the_model_does_not_have(bundle_copy, labelled_npz):
    """Input scales edited in the manifest dropped SQNR from 43.8 to 9.4 dB, still PASS."""
    def edit(d):
        d["inputs"][0]["scale"] *= 4
    _edit_manifest(bundle_copy, edit)
    result = run_limited(["validate", bundle_copy, "--data", labelled_npz])
    _report("validate edited scale", result)
    assert_contained(result, 1, "inputs[0].scale", "does not match the model's")
    assert not (bundle_copy / "validation.json").exists()


# -- item 15: two concurrent --force converts into one folder -------------------------------------------------
def test_concurrent_force_converts_one_writes_the_other_says_it_did_not(tmp_path, keras3_model, calib_npy):
    """Both printed "wrote", though the first one's bundle was replaced by the second's."""
    out = tmp_path / "bundle"
    shutil.copytree(api.convert(model=keras3_model, output=tmp_path / "old", quantize="none").bundle, out)
    other: dict = {}

    def progress(stage: str) -> None:  # the second run starts and finishes while the first one packages
        if stage == "package" and not other:
            other["result"] = api.convert(model=keras3_model, output=out, force=True, quantize="dynamic")

    with pytest.raises(PackagingError, match="was replaced by another run while converting"):
        api.convert(model=keras3_model, output=out, force=True, calibration=calib_npy, progress=progress)
    manifest = read_manifest(out)
    assert manifest.quantization.requested == "dynamic"  # the second run's bundle, whole
    verify_artifacts(out, manifest.artifacts)
    assert not leftovers(tmp_path)


# -- review finding: the manifest's 'labels' named any file, and report / validate read it -------------------
@pytest.mark.parametrize("command", ["report", "validate"])
def test_labels_outside_the_labels_artifact_are_refused(bundle_copy, tmp_path, labelled_npz, command):
    """``"labels": "/abs/secret.txt"`` made ``edgepack report`` copy the file's lines into report.html as
    class names (validate rebuilt the page the same way): only the verified labels artifact is read."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-line1\nTOPSECRET-line2\n")
    _edit_manifest(bundle_copy, lambda d: d.update(labels=str(secret)))
    before = snapshot(bundle_copy)
    args = ["report", bundle_copy, "-o", tmp_path / "page.html"] if command == "report" else \
        ["validate", bundle_copy, "--data", labelled_npz]
    res = run_cli(args)
    assert_error(res, 1, "'labels'", "not the bundle's labels artifact")
    assert "TOPSECRET" not in res.stdout + res.stderr
    assert not (tmp_path / "page.html").exists()
    assert snapshot(bundle_copy) == before
