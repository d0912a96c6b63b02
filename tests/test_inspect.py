from __future__ import annotations

import json

from click.testing import CliRunner

from edgepack.cli import main


def test_inspect_bundle_and_bare_tflite(int8_bundle):
    r = CliRunner().invoke(main, ["inspect", str(int8_bundle), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["mode"] == "int8" and info["granularity"] == "per-channel"
    assert info["bytes"] == (int8_bundle / "model.tflite").stat().st_size
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["dtype"] == "int8"
    assert info["ops"]["CONV_2D"] == 1 and info["ops"]["FULLY_CONNECTED"] == 2
    bare = json.loads(CliRunner().invoke(main, ["inspect", str(int8_bundle / "model.tflite"), "--json"]).stdout)
    assert bare["ops"] == info["ops"]
    assert bare["inputs"][0]["name"] == "image"  # from the signature
    assert bare["inputs"][0]["scale"] == info["inputs"][0]["scale"]
    table = CliRunner().invoke(main, ["inspect", str(int8_bundle)])
    assert "CONV_2D" in table.stdout and "zero point" in table.stdout


def test_inspect_rejects_non_tflite(tmp_path):
    f = tmp_path / "x.tflite"
    f.write_bytes(b"garbage" * 4)
    r = CliRunner().invoke(main, ["inspect", str(f)])
    assert r.exit_code == 1 and "not a TFLite model" in r.stderr
