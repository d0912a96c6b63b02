from __future__ import annotations

import json

import pytest

from edgepack.errors import BundleError
from edgepack.packaging.manifest import SCHEMA_VERSION, Manifest, example, read_manifest, schema, validate_dict


def test_documented_example_is_valid_and_round_trips():
    d = example()
    validate_dict(d)
    m = Manifest.from_dict(d)
    assert m.to_dict() == d
    assert m.schema_version == SCHEMA_VERSION
    assert m.quantization.mode == "int8"


def test_schema_rejects_lies_and_gaps():
    d = example()
    d["quantization"]["mode"] = "int7"
    with pytest.raises(BundleError, match="quantization/mode"):
        validate_dict(d)
    d = example()
    del d["artifacts"][0]["sha256"]
    with pytest.raises(BundleError, match="artifacts/0"):
        validate_dict(d)
    d = example()
    d["artifacts"][0]["path"] = "sub/model.tflite"
    validate_dict(d)  # relative paths inside the bundle are fine; verify_artifacts checks existence
    for outside in ("../escape.tflite", "a/../../x", "./model.tflite", "/etc/passwd"):  # issue 20: no '..' parts
        d["artifacts"][0]["path"] = outside
        with pytest.raises(BundleError, match="artifacts/0/path"):
            validate_dict(d)


def test_schema_is_draft_2020_and_requires_core_sections():
    s = schema()
    assert s["$schema"].endswith("2020-12/schema")
    assert {"source", "target", "quantization", "artifacts", "inputs", "outputs", "ops", "versions"} <= set(s["required"])


def test_read_manifest_errors(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    d = example()
    d["schema_version"] = "9.0"
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="not supported"):
        read_manifest(tmp_path)


def test_dynamic_model_is_never_labelled_int8(keras3_model, tmp_path):
    from edgepack import api

    m = api.convert(model=keras3_model, output=tmp_path / "b", quantize="dynamic").manifest
    assert m.quantization.mode == "dynamic"
    assert m.inputs[0].dtype == "float32" and m.inputs[0].scale is None
    assert m.versions["tensorflow"] == "2.19.0"


def test_schema_checks_the_cluster_and_low_rank_records():
    d = example()
    layer = {"name": "dense", "kind": "dense", "rank_before": 64, "rank_after": 8, "factorized": True,
             "params_before": 4160, "params_after": 1088, "macs_before": 4096, "macs_after": 1024}
    d["extras"]["optimize"] = {"before": {"params": 1, "macs": 1}, "after": {"params": 1, "macs": 1},
                               "low_rank": {"spec": "0.9", "layers": [layer]},
                               "cluster": {"clusters": 16, "layers": [], "finetune": {}}}
    validate_dict(d)
    del layer["macs_after"]
    with pytest.raises(BundleError, match="low_rank/layers/0"):
        validate_dict(d)
