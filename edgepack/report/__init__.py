"""``report.html``: one self-contained page a person reads, for a bundle and for a tune study.

A reader of bundles, like validation: it builds the page from ``manifest.json``, ``validation.json``
and the bundle's own side files (``sensitivity.json``, the ``.tflite`` flatbuffer's tensor table, read
without an interpreter) — never by loading or running a model. The page needs nothing but a browser:
CSS and figures inline, a Content-Security-Policy that lets no request leave the file, and every
name a model, label or file carries rendered as text (Jinja2 autoescaping).
"""

from __future__ import annotations

from edgepack.report.bundle import REPORT_NAME, render_bundle_report, write_bundle_report

__all__ = ["REPORT_NAME", "render_bundle_report", "write_bundle_report"]
