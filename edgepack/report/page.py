"""The Jinja2 environment every page is rendered with: autoescaping on, the number formats, and the
atomic write (a page is replaced whole or not at all)."""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import PackagingError

# Tables longer than this show their first rows and keep the full table folded (<details>)
MAX_ROWS = 200
SHOWN_ROWS = 50


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edgepack.report", "templates"),
                             autoescape=True,  # names from models and files are text, never markup
                             # a field an older bundle's files lack renders as "–", not as an error
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(bytes=fmt_bytes, num=fmt_num, pct=fmt_pct, shape=fmt_shape)
    env.globals.update(split_rows=split_rows, MAX_ROWS=MAX_ROWS)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def fmt_bytes(n: Any) -> str:
    """``45,664 B (44.6 KiB)``: the exact count and a readable one."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "–"
    n = int(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n:,} B ({n / size:.1f} {unit})"
    return f"{n:,} B"


def fmt_num(x: Any, digits: int = 4) -> str:
    """Numbers as a person reads them: ints with separators, floats to ``digits`` significant places."""
    if x is None or not x and not isinstance(x, (int, float, str)):  # None, Undefined, empty containers
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if math.isnan(x):
            return "NaN"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_pct(x: Any, digits: int = 2) -> str:
    """A fraction as a percentage."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "–"
    return f"{float(x) * 100:.{digits}f}%"


def fmt_shape(shape: Sequence[Any] | None) -> str:
    return "–" if shape is None else "×".join("?" if d is None else str(d) for d in shape)


def split_rows(rows: Sequence[Any], limit: int = MAX_ROWS, shown: int = SHOWN_ROWS) -> tuple[Sequence[Any], bool]:
    """(rows to show above the fold, whether the full table goes in a <details>)."""
    return (rows, False) if len(rows) <= limit else (rows[:shown], True)


def interval(d: Mapping[str, Any] | None, key: str) -> tuple[float, float] | None:
    """A metric's confidence interval where validation.json carries one: ``intervals[KEY]`` as
    ``{low, high, n}`` (a null bound is infinite, as for an exact SQNR), or the spellings
    ``KEY_interval``/``KEY_ci``, ``ci[KEY]``, ``KEY: {value, interval|ci|low/high}``."""
    if not d:
        return None
    cands = [(d.get("intervals") or {}).get(key), d.get(f"{key}_interval"), d.get(f"{key}_ci"),
             (d.get("ci") or {}).get(key)]
    v = d.get(key)
    if isinstance(v, Mapping):
        cands += [v.get("interval"), v.get("ci"), {"low": v.get("low"), "high": v.get("high")}]
    for c in cands:
        if isinstance(c, Mapping):
            if c.get("low", c.get("lo")) is None and c.get("high", c.get("hi")) is None:
                continue
            c = [c.get("low", c.get("lo")), c.get("high", c.get("hi"))]
        if isinstance(c, (list, tuple)) and len(c) >= 2 and all(x is None or isinstance(x, (int, float)) for x in c[:2]):
            return (-math.inf if c[0] is None else float(c[0])), (math.inf if c[1] is None else float(c[1]))
    return None


def value(d: Mapping[str, Any] | None, key: str) -> Any:
    """``d[key]``, or its ``value`` when the metric is an object carrying its interval."""
    v = (d or {}).get(key)
    return v.get("value") if isinstance(v, Mapping) else v


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a page to share: the mode a plain open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise PackagingError(f"cannot write {path}: {err.strerror or err}",
                             hint="check the folder's permissions and free space, or choose another -o") from err
    return path
