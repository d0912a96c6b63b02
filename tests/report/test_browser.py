"""The bundle page and the study page in a real browser (headless Chromium, Debian's package; `make test`
installs it where missing): every figure drew, the key numbers shown are the manifest's, the injected
label is text, nothing went to the console, and no request left the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgepack.report.page import fmt_bytes
from tests.report.browser import chromium, probe
from tests.report.conftest import HOSTILE_FILE, HOSTILE_LABEL

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed and could not be: "
                                "apt-get install chromium (`make chromium` does it as root)")
# REPORT_SCREENSHOTS=docs makes the tests keep their screenshots for the README (make report-check does)
SHOTS = os.environ.get("REPORT_SCREENSHOTS")


def _clean(result: dict) -> None:
    assert result["errors"] == [] and result["console"] == [], (result["errors"], result["console"])
    assert result["violations"] == [] and result["resources"] == []  # no request of any kind
    assert result["alerts"] == 0 and result["imgs_with_src_x"] == 0
    for img in result["images"]:
        assert img["complete"] and img["natural_width"] > 0, img
    for fig in result["figures"]:
        assert fig["width"] > 0 and fig["height"] > 0 and fig["children"] > 0, fig


def test_the_harness_sees_a_request_an_error_and_markup(tmp_path):
    """The checks can fail: a page that fetches, throws and runs an injected handler is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
                   "'none'; img-src data:; script-src 'unsafe-inline'\"></head><body>"
                   '<img src="http://example.invalid/x.png"><img src=x onerror=alert(1)>'
                   "<script>undefined_function()</script></body></html>")
    result = probe(bad)
    assert result["violations"] and result["errors"] and result["console"]
    assert result["alerts"] == 1 and result["imgs_with_src_x"] == 1
    assert any(img["natural_width"] == 0 for img in result["images"])


def test_bundle_page_in_chromium(hostile_bundle):
    shot = Path(SHOTS) / "report-bundle.png" if SHOTS else None
    result = probe(hostile_bundle / "report.html", screenshot=shot)
    _clean(result)
    manifest = json.loads((hostile_bundle / "manifest.json").read_text())
    validation = json.loads((hostile_bundle / "validation.json").read_text())
    keys = result["keys"]
    assert keys["model-bytes"] == [fmt_bytes(manifest["artifacts"][0]["bytes"])]
    assert keys["source-sha256"] == [manifest["source"]["sha256"]]
    assert keys["source-file"] == [f"{HOSTILE_FILE}.keras"]  # shown as the characters it is
    assert keys["mode"] == [manifest["quantization"]["mode"]] and keys["target"] == [manifest["target"]["name"]]
    assert keys["accuracy_bundle"][0].startswith(f"{validation['accuracy_bundle'] * 100:.2f}%")
    assert keys["verdict"] == ["PASS" if validation["passed"] else "FAIL"]
    assert HOSTILE_LABEL in result["text"]  # the label reads as text in the confusion matrix
    assert len(result["figures"]) >= 2  # the flash bar and the sensitivity chart
    assert any(img["alt"].startswith("channels: finetune") for img in result["images"])  # fine-tuning curves
    assert (hostile_bundle / "report.html").stat().st_size < 200_000
    if shot is not None:
        assert shot.stat().st_size > 10_000


def test_study_page_in_chromium(study_dir):
    shot = Path(SHOTS) / "report-study.png" if SHOTS else None
    result = probe(study_dir / "report.html", screenshot=shot)
    _clean(result)
    assert len(result["images"]) == 1  # the Pareto picture, inline
    assert (study_dir / "report.html").stat().st_size < 300_000
    best = json.loads((study_dir / "best.json").read_text())
    assert result["keys"]["best-trial"] == [str(best["trial"])]
    assert result["keys"]["count-feasible"] == ["1"] and result["keys"]["count-infeasible"] == ["1"]
    assert result["keys"]["best-link"] == ["best/report.html"] and (study_dir / "best" / "report.html").is_file()
    assert "--max-bytes" in result["text"]  # the infeasible trial's reason
    assert result["sorted_up"] == ["0", "1"] and result["sorted_down"] == ["1", "0"]  # the trials table sorts


def test_study_page_is_rebuilt_from_the_storage_alone(study_dir, keras3_model, tmp_path):
    from edgepack import api

    page = study_dir / "report.html"
    before = page.read_text("utf-8")
    page.unlink()
    result = api.tune(model=keras3_model, output=study_dir, report=True)
    assert result["report"] == str(page)
    after = page.read_text("utf-8")
    assert 'data-key="best-trial"' in after and after.count("<tr>") == before.count("<tr>")
