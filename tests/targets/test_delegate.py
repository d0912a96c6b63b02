"""Measured XNNPACK coverage for phone targets: recorded, shown by inspect, checked per target profile."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import EdgepackError, TargetConstraintError
from edgepack.packaging.manifest import read_manifest
from edgepack.runtimes.delegate import measure_coverage
from edgepack.targets import load_target
from edgepack.targets.checks import ModelFacts, check_delegate, run_checks
from edgepack.targets.spec import _build


def test_int8_phone_bundle_records_what_xnnpack_takes(phone_bundle):
    cov = read_manifest(phone_bundle("int8")).extras["delegate"]
    assert cov["delegate"] == "xnnpack"
    on_cpu = {c["op"] for c in cov["cpu_ops"]}
    assert cov["nodes"] == 4 and cov["delegated"] + len(cov["cpu_ops"]) == cov["nodes"]
    assert cov["partitions"] >= 1
    assert "CONV_2D" not in on_cpu and "FULLY_CONNECTED" not in on_cpu  # the heavy ops run on XNNPACK
    assert all(c["reason"] for c in cov["cpu_ops"])


def test_float_model_runs_entirely_on_xnnpack(phone_bundle):
    cov = read_manifest(phone_bundle("none")).extras["delegate"]
    assert (cov["delegated"], cov["partitions"], cov["cpu_ops"]) == (cov["nodes"], 1, [])


def test_int16x8_falls_off_xnnpack_onto_reference_kernels(phone_classifier, tmp_path):
    from edgepack import api

    api.convert(model=phone_classifier["model"], output=tmp_path / "b", calibration=phone_classifier["calib"],
                quantize="int16x8", target="generic", preprocess="mean=127.5,std=127.5")
    cov = measure_coverage((tmp_path / "b" / "model.tflite").read_bytes())
    heavy = [c for c in cov["cpu_ops"] if c["op"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(heavy) == 2 and all("int16" in c["reason"] for c in heavy)
    spec = load_target("android-arm64")
    ok, detail = check_delegate(spec, ModelFacts(mode="int16x8", size=1, op_counts={}, delegate=cov))
    assert ok and detail.startswith("warning: ") and "int16 activations" in detail
    strict = dataclasses.replace(spec, delegate_fallback="fail")
    with pytest.raises(TargetConstraintError, match="int16x8 model falls off xnnpack on target android-arm64"):
        run_checks(strict, ModelFacts(mode="int16x8", size=1, op_counts={}, delegate=cov))


def test_profile_delegate_fallback_is_warn_or_fail():
    assert load_target("android-arm64").delegate_fallback == "warn"
    with pytest.raises(EdgepackError, match="delegate_fallback"):
        _build({"name": "x", "description": "x", "delegate_fallback": "maybe", "source_file": "x.toml"})


def test_inspect_shows_coverage_and_metadata(phone_bundle):
    res = CliRunner().invoke(main, ["inspect", str(phone_bundle("int8"))])
    assert res.exit_code == 0, res.output
    assert "xnnpack: 3 of 4 ops delegated, 1 partition(s)" in res.output
    assert "metadata (parser >= 1.0.0): name 'colours'" in res.output
    assert "normalization mean [127.5] std [127.5]" in res.output and "files labels.txt" in res.output
