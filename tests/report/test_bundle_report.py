"""report.html of a bundle: written by convert, rewritten by validate and by `edgepack report`; names are
text; tables of big models fold; the sensitivity chart names its ops."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.report.figures import sensitivity_svg, short_name
from edgepack.report.page import MAX_ROWS, fmt_bytes, interval, render
from tests.report.conftest import HOSTILE_FILE, HOSTILE_LABEL


def test_convert_writes_the_page_and_validate_updates_it(hostile_bundle):
    page = (hostile_bundle / "report.html").read_text("utf-8")
    manifest = json.loads((hostile_bundle / "manifest.json").read_text())
    assert "report.html" not in [a["path"] for a in manifest["artifacts"]]  # a view, rewritten by validate
    validation = json.loads((hostile_bundle / "validation.json").read_text())
    assert validation["confusion"]["classes"] == 4
    assert sum(n for row in validation["confusion"]["matrix"] for n in row) == validation["samples"]
    assert 'id="confusion"' in page and 'data-key="verdict"' in page  # the page after validate
    assert fmt_bytes(manifest["artifacts"][0]["bytes"]) in page
    assert 'id="sensitivity"' in page and 'id="candidates"' in page


def test_names_are_text_never_markup(hostile_bundle):
    page = (hostile_bundle / "report.html").read_text("utf-8")
    assert HOSTILE_LABEL not in page and HOSTILE_FILE not in page and "<b>bold</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b onmouseover=alert(2)&gt;tiny.keras" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_report_command_writes_elsewhere_and_refuses_to_overwrite(hostile_bundle, tmp_path):
    out = tmp_path / "page.html"
    res = CliRunner().invoke(main, ["report", str(hostile_bundle), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text("utf-8").startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(main, ["report", str(hostile_bundle), "-o", str(out)])
    assert res.exit_code == 1 and "already exists" in res.output and "--force" in res.output
    assert CliRunner().invoke(main, ["report", str(hostile_bundle), "-o", str(out), "--force"]).exit_code == 0


def test_report_of_a_tampered_or_missing_bundle_is_one_line(hostile_bundle, tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "not a bundle directory" in res.output
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(hostile_bundle, copy)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-1] ^= 1
    (copy / "model.tflite").write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 1 and "does not match the sha256" in res.output


def test_long_tables_fold_into_details():
    rows = [[i, f"t{i}"] for i in range(MAX_ROWS + 1)]
    page = render("macros.html.j2") + ""  # the macros compile
    from edgepack.report.page import environment

    macro = environment().get_template("macros.html.j2").module.table
    html = str(macro(["#", "name"], rows))
    assert html.count("<details>") == 1 and f"all {MAX_ROWS + 1} rows" in html
    short = str(macro(["#", "name"], rows[:MAX_ROWS]))
    assert "<details>" not in short and page is not None


@pytest.mark.parametrize("spelling", [
    {"accuracy_bundle": 0.9, "accuracy_bundle_interval": [0.85, 0.94]},
    {"accuracy_bundle": 0.9, "intervals": {"accuracy_bundle": {"low": 0.85, "high": 0.94, "n": 300}}},
    {"accuracy_bundle": 0.9, "intervals": {"accuracy_bundle": [0.85, 0.94]}},
    {"accuracy_bundle": {"value": 0.9, "ci": {"low": 0.85, "high": 0.94}}},
])
def test_intervals_are_read_in_any_spelling(spelling):
    assert interval(spelling, "accuracy_bundle") == (0.85, 0.94)
    assert interval({"accuracy_bundle": 0.9}, "accuracy_bundle") is None
    assert interval({"intervals": {"x": {"low": 40.0, "high": None, "n": 64}}}, "x") == (40.0, float("inf"))


def test_intervals_render_next_to_their_figures(hostile_bundle, tmp_path):
    """validation.json with intervals (edgepack.validation.intervals' layout) shows them on the page."""
    import shutil

    from edgepack.report import render_bundle_report

    copy = tmp_path / "b"
    shutil.copytree(hostile_bundle, copy)
    v = json.loads((copy / "validation.json").read_text())
    out = v["outputs"][0]["name"]
    v.update(confidence=0.95, intervals={"accuracy_bundle": {"low": 0.25, "high": 0.35, "n": 64},
                                         "worst_slice_sqnr_db": {out: {"low": 38.5, "high": None, "n": 64}}})
    (copy / "validation.json").write_text(json.dumps(v))
    page = render_bundle_report(copy)
    assert "95.0% confidence intervals" in page and "[25.00% … 35.00%]" in page and "[38.5 … ∞]" in page


def test_sensitivity_chart_names_ops_and_marks_kept_ones():
    rows = [{"index": i, "op": "CONV_2D" if i % 2 else "ADD", "node": f"model/block_{i}/conv;model/block_{i}/bias",
             "scaled_rmse": 2.0 + i, "kept": "float" if i == 3 else None, "gain": None} for i in range(6)]
    rows.append({"index": 6, "op": "ADD", "node": "<script>x</script>", "scaled_rmse": 1.0, "kept": None, "gain": 0.5})
    svg = sensitivity_svg(rows, "t")
    assert svg.startswith("<svg") and svg.count("<title>") == len(rows)
    assert "<title>#3 CONV_2D model/block_3/conv;model/block_3/bias" in svg  # full name on hover
    assert "CONV_2D block_3/conv" in svg  # the tick label: type and short name, as text
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert short_name("a/b/c/d;e/f") == "c/d"


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55-ethos-u55"])
def test_microcontroller_pages_show_arena_firmware_and_vela(target_bundle, target):
    bundle = target_bundle(target)
    page = (bundle / "report.html").read_text("utf-8")
    manifest = json.loads((bundle / "manifest.json").read_text())
    extras = manifest["extras"]
    assert 'data-key="arena-bytes"' in page and "TFLite Micro arena" in page
    assert fmt_bytes(extras["tflm"]["firmware"]["tensor_arena_size"]) in page
    assert all(f in page for f in extras["tflm"]["firmware"]["files"])
    if "vela" in extras:
        assert "Ethos-U: Vela" in page and fmt_bytes(extras["vela"]["sram_bytes"]) in page
        assert "Vela&#39;s estimate" in page or "Vela's estimate" in page
    else:
        assert target == "cortex-m4"


@pytest.mark.parametrize("validation", [
    {"passed": True},  # an older or partial validation.json: what it lacks shows as "–"
    {"outputs": "not a list", "confusion": {"matrix": "x"}, "passed": False},
    [1, 2, 3],
])
def test_an_odd_validation_json_is_a_page_or_one_line(hostile_bundle, tmp_path, validation):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(hostile_bundle, copy)
    (copy / "validation.json").write_text(json.dumps(validation))
    res = CliRunner().invoke(main, ["report", str(copy)])
    if validation == {"passed": True}:
        assert res.exit_code == 0, res.output
        assert "PASS" in (copy / "report.html").read_text("utf-8")
    else:
        assert res.exit_code == 1 and res.output.startswith("error: ") and res.output.count("\n") <= 2, res.output
        assert "validation" in res.output
