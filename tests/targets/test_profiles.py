"""Target profiles as data, the checks' messages, and docs/targets.md generated from both."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import TargetConstraintError
from edgepack.targets import available_targets, load_target
from edgepack.targets.checks import ModelFacts, describe_checks, run_checks
from edgepack.targets.docs import render_targets_md

REPO = Path(__file__).resolve().parents[2]
MCUS = ("cortex-m4", "cortex-m7", "cortex-m33", "esp32-s3", "cortex-m55-ethos-u55")


def test_required_profiles_exist():
    names = available_targets()
    for name in (*MCUS, "android-arm64", "ios-arm64"):
        assert name in names
    assert "microcontroller" not in names  # abstract parent


@pytest.mark.parametrize("name", MCUS)
def test_microcontrollers_are_tflm_int8_batch1_with_budgets(name):
    spec = load_target(name)
    assert spec.runtime == "tflm"
    assert spec.quantize_modes[0] == "int8" and set(spec.quantize_modes) <= {"int8", "int16x8"}
    assert spec.batch == 1
    assert spec.ram_bytes and spec.flash_bytes and spec.alignment == 16
    assert spec.min_calibration_samples >= 100


def test_cortex_m4_class_and_ethos_u_config():
    m4 = load_target("cortex-m4")
    assert (m4.ram_bytes, m4.flash_bytes) == (256 * 1024, 1024 * 1024)
    assert m4.quantize_modes == ("int8", "int16x8")  # TFLM's int16 kernels: a recurrent state int8 cannot carry
    u55 = load_target("cortex-m55-ethos-u55")
    assert u55.vela["accelerator"] == "ethos-u55-128"
    assert u55.vela["system_config"] == "Ethos_U55_High_End_Embedded"
    assert load_target("android-arm64").batch is None  # phones keep the dynamic batch


def _facts(**kw) -> ModelFacts:
    base = dict(mode="int8", size=40_000, op_counts={"CONV_2D": 2, "FULLY_CONNECTED": 1}, arena_bytes=6_000)
    return ModelFacts(**{**base, **kw})


def test_checks_pass_within_budget():
    results = run_checks(load_target("cortex-m4"), _facts())
    assert [name for name, ok, _ in results] == ["quantize_mode", "ops", "flash", "arena", "delegate"]
    assert all(ok for _, ok, _ in results)


def test_over_ram_names_arena_and_limit():
    with pytest.raises(TargetConstraintError) as err:
        run_checks(load_target("cortex-m4"), _facts(arena_bytes=300_000))
    msg = str(err.value)
    assert "tensor arena needs 300000 bytes" in msg and "RAM budget of 262144 bytes" in msg
    assert "\n" not in msg


def test_vela_gates_name_the_vela_numbers_and_the_limits():
    from edgepack.targets.checks import VELA_CHECKS

    u55 = load_target("cortex-m55-ethos-u55")
    fits = run_checks(u55, _facts(vela_size=40_000, vela_flash_bytes=30_000, vela_sram_bytes=9_000), VELA_CHECKS)
    assert [(n, ok) for n, ok, _ in fits] == [("vela_flash", True), ("vela_sram", True)]
    # the plain model's flash is not the gate on an Ethos-U target; the Vela model's is
    assert run_checks(u55, _facts(size=5_000_000))[2][2].endswith("flash is checked on the Vela model")
    with pytest.raises(TargetConstraintError) as err:
        run_checks(u55, _facts(vela_size=4_000_000, vela_flash_bytes=4_300_000, vela_sram_bytes=3_000_000),
                   VELA_CHECKS)
    msg = str(err.value)
    assert "Vela model needs 4300000 bytes of flash (4199.2 KiB, Vela's reported flash), over target " \
           "cortex-m55-ethos-u55's flash budget of 4194304 bytes" in msg
    assert "Vela model needs 3000000 bytes of SRAM" in msg and "RAM budget of 2097152 bytes" in msg
    assert "\n" not in msg


def test_unsupported_ops_listed_with_counts_and_all_failures_at_once():
    with pytest.raises(TargetConstraintError) as err:
        run_checks(load_target("cortex-m4"),
                   _facts(op_counts={"CONV_2D": 1, "GELU": 3}, size=2_000_000, mode="float16"))
    msg = str(err.value)
    assert "GELU x3" in msg and "CONV_2D" not in msg
    assert "flash budget of 1048576 bytes" in msg and "mode float16" in msg


def test_docs_list_every_profile_and_check():
    text = render_targets_md()
    for name in available_targets():
        assert f"### {name}" in text
    for _, doc in describe_checks():
        assert doc in text
    assert "ethos-u55-128" in text and "`GELU`" not in text and "`CONV_2D`" in text


def test_shipped_docs_are_current():
    assert (REPO / "docs" / "targets.md").read_text("utf-8") == render_targets_md(), \
        "regenerate with: edgepack targets --docs"


def test_cli_targets_docs_writes_file_and_shows_one(tmp_path):
    out = tmp_path / "targets.md"
    res = CliRunner().invoke(main, ["targets", "--docs", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text("utf-8") == render_targets_md()
    res = CliRunner().invoke(main, ["targets", "cortex-m4", "--json"])
    assert res.exit_code == 0
    assert '"ram_bytes": 262144' in res.output and '"batch": 1' in res.output
    res = CliRunner().invoke(main, ["targets", "--docs", str(tmp_path / "missing" / "deeper" / "t.md")])
    assert res.exit_code == 2 and "cannot write" in res.output
