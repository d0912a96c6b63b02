"""Regenerate the TFLM op list in edgepack/targets/microcontroller.toml from the installed
``tflite-micro`` package: each builtin op is looked up by TFLM's own interpreter.

    .venv/bin/python tools/gen_tflm_ops.py        # rewrites the ops = [...] block and ops_source
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "edgepack" / "targets" / "microcontroller.toml"


def ops_block(ops: list[str], width: int = 100) -> str:
    rows, row = [], "   "
    for op in ops:
        item = f' "{op}",'
        if len(row) + len(item) > width:
            rows.append(row)
            row = "   "
        row += item
    rows.append(row)
    return "ops = [\n" + "\n".join(rows) + "\n]"


def main() -> int:
    import tflite_micro

    from edgepack.runtimes.tflm_ops import registered_builtin_ops

    text = PROFILE.read_text(encoding="utf-8")
    version = tflite_micro.__version__
    text = re.sub(r"(?ms)^ops = \[.*?^\]", lambda _: ops_block(registered_builtin_ops()), text)
    text = re.sub(r"tflite-micro [0-9A-Za-z.+-]+", f"tflite-micro {version}", text)
    PROFILE.write_text(text, encoding="utf-8")
    print(f"wrote {PROFILE} (tflite-micro {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
