"""Corrupt .tflite files (seeded byte flips and truncations): one line, never a traceback or a crash."""

from __future__ import annotations

import json

import pytest

from edgepack.packaging.bundle import sha256_bytes
from tests.faults.conftest import assert_error, run_cli, snapshot
from tests.faults.fuzzing import mutate_bytes

SEEDS = range(25)


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]


@pytest.mark.parametrize("seed", SEEDS)
def test_inspect_on_a_corrupt_tflite_is_one_line_or_a_model(int8_bundle, tmp_path, seed):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(mutate_bytes((int8_bundle / "model.tflite").read_bytes(), seed))
    res = run_cli(["inspect", bad, "--json"])
    if res.code == 0:  # the change hit data (a weight, a scale): still a well-formed model
        assert json.loads(res.stdout)["ops"]
    else:
        assert_error(res, 1, str(bad))


def test_the_corrupt_cases_are_mostly_rejected(int8_bundle, tmp_path):
    """The parametrized cases above must exercise the error path, not only the happy one."""
    data = (int8_bundle / "model.tflite").read_bytes()
    codes = []
    for seed in SEEDS:
        (tmp_path / "m.tflite").write_bytes(mutate_bytes(data, seed))
        codes.append(run_cli(["inspect", tmp_path / "m.tflite"]).code)
    assert codes.count(1) >= 10, codes


@pytest.mark.parametrize("bad, why", [
    (b"", "no TFL3 identifier"),
    (b"\x10\x00\x00\x00TFL3" + b"\xff" * 8, "corrupt TFLite flatbuffer"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 64, "corrupt TFLite flatbuffer"),
])
def test_inspect_names_the_fault(tmp_path, bad, why):
    (tmp_path / "x.tflite").write_bytes(bad)
    assert_error(run_cli(["inspect", tmp_path / "x.tflite"]), 1, why, "x.tflite")


def test_inspect_checks_the_manifest_hash(bundle_copy):
    model = bundle_copy / "model.tflite"
    data = model.read_bytes()
    model.write_bytes(_flip(data, len(data) // 2))
    before = snapshot(bundle_copy)
    assert_error(run_cli(["inspect", bundle_copy]), 1, "model.tflite does not match the sha256", "re-create")
    assert snapshot(bundle_copy) == before


def test_inspect_refuses_artifacts_outside_the_bundle(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["path"] = "../../../etc/hostname"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_error(run_cli(["inspect", bundle_copy]), 1, "points outside the bundle")


def test_inspect_on_a_corrupt_model_with_a_matching_hash(bundle_copy):
    """The hash was updated to match a corrupted model: the flatbuffer check still catches it."""
    model = bundle_copy / "model.tflite"
    bad = b"\x10\x00\x00\x00TFL3" + model.read_bytes()[8:]
    model.write_bytes(bad)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["path"] == "model.tflite":
            art["sha256"], art["bytes"] = sha256_bytes(bad), len(bad)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_error(run_cli(["inspect", bundle_copy]), 1, "corrupt TFLite flatbuffer")


def test_missing_required_input_is_refused_before_a_kernel_sees_it(int8_bundle, tmp_path):
    """A well-formed flatbuffer whose FULLY_CONNECTED lost its weights (-1): LiteRT's kernel would
    dereference it (a segfault found by benchmarks/fuzz.py --run); the verifier refuses it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray((int8_bundle / "model.tflite").read_bytes()), 0)
    fc = [i for i, c in enumerate(model.operatorCodes)
          if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.FULLY_CONNECTED]
    op = next(o for o in model.subgraphs[0].operators if o.opcodeIndex in fc)
    op.inputs[1] = -1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    (tmp_path / "m.tflite").write_bytes(bytes(builder.Output()))
    assert_error(run_cli(["inspect", tmp_path / "m.tflite"]), 1, "(FULLY_CONNECTED) lacks a required input")
