"""Open a report page in headless Chromium (Debian's ``chromium``) and read back what it rendered.

A probe script is put into a copy of the page, first thing in <head>: it records script errors,
console.error calls, Content-Security-Policy violations and alert() calls, and after the load event
writes what the page shows — each image's natural width, each inline figure's size, every
``data-key`` element's text, the resources the page fetched — as JSON into the DOM, which
``--dump-dom`` returns. Chromium's own log (``--enable-logging=stderr``) is read for console lines.
Host resolution is mapped to nothing, so even a request the page tried could not reach a server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PROBE = "<script>\n" + (Path(__file__).parent / "probe.js").read_text("utf-8") + "</script>"


def chromium() -> str | None:
    return shutil.which("chromium") or (("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}"]


def probe(page: Path, *, screenshot: Path | None = None, timeout: float = 90.0) -> dict[str, Any]:
    """What Chromium rendered from ``page``: the probe's JSON plus ``console`` (Chromium's console log lines)."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium")
    with tempfile.TemporaryDirectory(prefix="edgepack-chromium-") as tmp:
        tmp_path = Path(tmp)
        html = page.read_text("utf-8")
        probed = tmp_path / "probed.html"
        probed.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
        run = subprocess.run([exe, *_flags(tmp_path / "profile"), "--enable-logging=stderr", "--v=0",
                              "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                             capture_output=True, text=True, timeout=timeout)
        if screenshot is not None:
            subprocess.run([exe, *_flags(tmp_path / "profile2"), "--window-size=1280,1800", "--hide-scrollbars",
                            f"--screenshot={screenshot}", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=timeout, check=True)
    m = re.search(r'<pre id="edgepack-probe">(.*?)</pre>', run.stdout, re.S)
    if m is None:
        raise RuntimeError(f"chromium rendered no probe result (exit {run.returncode}): {run.stderr[-2000:]}")
    import html as html_mod

    result = json.loads(html_mod.unescape(m.group(1)))
    result["console"] = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    return result
