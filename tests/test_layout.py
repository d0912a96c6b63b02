"""The house's size rules (issue 25), checked in `make test` like the import-linter contracts: no function in
the package over 60 lines, no module of the pipeline over 400."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgepack"
MAX_FUNCTION_LINES = 60
MAX_PIPELINE_MODULE_LINES = 400


def test_no_function_is_over_60_lines():
    long, seen = [], 0
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                seen += 1
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert seen > 500, seen  # the walk really read the package
    assert not long, "split these: " + "; ".join(long)


def test_no_pipeline_module_is_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines())
             for p in (PACKAGE / "pipeline").rglob("*.py")}
    assert len(sizes) > 5, sizes
    assert not {k: v for k, v in sizes.items() if v > MAX_PIPELINE_MODULE_LINES}
