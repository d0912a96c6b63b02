"""A bundle's ``report.html``: read the bundle's files, lay out the sections, render one page."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgepack.errors import BundleError
from edgepack.packaging.bundle import verify_artifacts
from edgepack.packaging.manifest import read_json_file, read_manifest
from edgepack.report import model as model_tables
from edgepack.report import sections
from edgepack.report.page import render, write_atomic

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"
VALIDATION_NAME = "validation.json"


def _side_json(bundle: Path, name: str) -> Any:
    """A JSON file beside the manifest; None when absent, one line when unreadable (the bundle's JSON
    size cap, regular files only)."""
    path = bundle / name
    if not path.is_file():
        return None
    return read_json_file(path)


def _labels(bundle: Path, manifest) -> list[str] | None:
    """The labels artifact's lines (read_manifest checked that ``labels`` names it, verify_artifacts that
    it lies inside the bundle with its recorded hash)."""
    art = next((a for a in manifest.artifacts if a.role == "labels"), None)
    if art is None:
        return None
    path = bundle / art.path
    try:
        return path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _read(bundle: Path) -> dict[str, Any]:
    """The bundle's files: the manifest (schema-checked, artifacts verified), validation.json, the
    sensitivity table, the flatbuffer (parsed, not run) and the labels."""
    from edgepack.tflite_model import read_tflite

    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest.artifacts)  # a page about a tampered bundle would vouch for it
    validation = _side_json(bundle, VALIDATION_NAME)
    if validation is not None and not isinstance(validation, dict):
        raise BundleError(f"{bundle / VALIDATION_NAME}: not a validation report (a JSON {type(validation).__name__})",
                          hint="validate the bundle again")
    sens_art = next((a for a in manifest.artifacts if a.role == "sensitivity"), None)
    return {"manifest": manifest, "validation": validation,
            "sensitivity": _side_json(bundle, sens_art.path) if sens_art else None,
            "info": read_tflite(bundle / manifest.artifact("model").path), "labels": _labels(bundle, manifest)}


def bundle_context(files: dict[str, Any]) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    import edgepack

    manifest, validation, info = files["manifest"], files["validation"], files["info"]
    m = manifest.to_dict()
    return {
        "edgepack_version": edgepack.__version__,
        "manifest": m,
        "title": f"{manifest.source.file} → {manifest.target.name}",
        "summary": sections.summary(m, validation),
        "validation": sections.validation(validation, files["labels"]),
        "quantization": sections.quantization(m, files["sensitivity"],
                                              model_tables.tensor_table(info, m.get("budget"))),
        "optimization": sections.optimization(m),
        "model": {**model_tables.model_rows(info), "io": sections.io(m), "mcu": sections.mcu(m),
                  "vela": (m.get("extras") or {}).get("vela")},
        "provenance": sections.provenance(m),
    }


def render_bundle_report(bundle: str | Path) -> str:
    """The page for ``bundle``, as a string."""
    import jinja2

    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory", hint="give the -o folder of 'edgepack convert'")
    files = _read(bundle)
    try:
        return render("bundle.html.j2", **bundle_context(files))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, jinja2.TemplateError) as err:
        # the manifest passed its schema: what does not fit is a side file's layout, which nothing hashes
        raise BundleError(f"{bundle}: {VALIDATION_NAME} or the sensitivity table has an unexpected layout "
                          f"({type(err).__name__}: {err})",
                          hint="validate the bundle again, or convert it again") from err


def write_bundle_report(bundle: str | Path, output: str | Path | None = None) -> Path:
    """Write the page to ``output`` (default ``bundle/report.html``, replaced whole)."""
    start = time.perf_counter()
    out = Path(output) if output is not None else Path(bundle) / REPORT_NAME
    path = write_atomic(out, render_bundle_report(bundle))
    log.info("wrote %s in %.3fs", path, time.perf_counter() - start)
    return path
