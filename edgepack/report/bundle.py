"""A bundle's ``report.html``: read the bundle's files, lay out the sections, render one page."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from edgepack.errors import BundleError
from edgepack.packaging.bundle import verify_artifacts
from edgepack.packaging.manifest import read_manifest
from edgepack.report import model as model_tables
from edgepack.report import sections
from edgepack.report.page import render, write_atomic

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"
VALIDATION_NAME = "validation.json"


def _side_json(bundle: Path, name: str) -> Any:
    """A JSON file beside the manifest; None when absent, one line when unreadable."""
    path = bundle / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise BundleError(f"{path}: not readable JSON ({err})", hint="validate the bundle again") from err


def _labels(bundle: Path, manifest) -> list[str] | None:
    if not manifest.labels:
        return None
    path = bundle / manifest.labels
    try:
        return path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def bundle_context(bundle: Path) -> dict[str, Any]:
    """Everything the page shows, as plain data: the manifest, validation.json, the sensitivity
    table and the flatbuffer's tensor table (parsed, not run)."""
    from edgepack.tflite_model import read_tflite

    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest.artifacts)  # a page about a tampered bundle would vouch for it
    m = manifest.to_dict()
    validation = _side_json(bundle, VALIDATION_NAME)
    sens_art = next((a for a in manifest.artifacts if a.role == "sensitivity"), None)
    sensitivity = _side_json(bundle, sens_art.path) if sens_art else None
    info = read_tflite(bundle / manifest.artifact("model").path)
    labels = _labels(bundle, manifest)
    return {
        "manifest": m,
        "title": f"{manifest.source.file} → {manifest.target.name}",
        "summary": sections.summary(m, validation),
        "validation": sections.validation(validation, labels),
        "quantization": sections.quantization(m, sensitivity, model_tables.tensor_table(info, m.get("budget"))),
        "optimization": sections.optimization(m),
        "model": {**model_tables.model_rows(info), "io": sections.io(m), "mcu": sections.mcu(m),
                  "vela": (m.get("extras") or {}).get("vela")},
        "provenance": sections.provenance(m),
    }


def render_bundle_report(bundle: str | Path) -> str:
    """The page for ``bundle``, as a string."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory", hint="give the -o folder of 'edgepack convert'")
    ctx = bundle_context(bundle)
    import edgepack

    return render("bundle.html.j2", edgepack_version=edgepack.__version__, **ctx)


def write_bundle_report(bundle: str | Path, output: str | Path | None = None) -> Path:
    """Write the page to ``output`` (default ``bundle/report.html``, replaced whole)."""
    start = time.perf_counter()
    out = Path(output) if output is not None else Path(bundle) / REPORT_NAME
    path = write_atomic(out, render_bundle_report(bundle))
    log.info("wrote %s in %.3fs", path, time.perf_counter() - start)
    return path
