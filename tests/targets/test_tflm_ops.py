"""The microcontroller profiles' op list is TFLM's own: the installed interpreter registers exactly it."""

from __future__ import annotations

from edgepack.runtimes.tflm_ops import registered_builtin_ops
from edgepack.targets import load_target


def test_profile_op_list_matches_installed_tflm():
    registered = registered_builtin_ops()
    assert "CONV_2D" in registered and "FULLY_CONNECTED" in registered
    assert "GELU" not in registered  # an op LiteRT has and TFLM lacks
    spec = load_target("cortex-m4")
    assert sorted(spec.ops) == registered, "run: .venv/bin/python tools/gen_tflm_ops.py"


def test_every_microcontroller_profile_shares_the_list():
    ops = load_target("cortex-m4").ops
    for name in ("cortex-m7", "cortex-m33", "esp32-s3", "cortex-m55-ethos-u55"):
        assert load_target(name).ops == ops
