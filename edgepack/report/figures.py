"""Figures that name what they show (matplotlib, drawn only when a page has something to plot).

The sensitivity chart labels each op with its type and a short layer name, marks the ops kept out
of int8, and starts its y axis where the data does; as SVG each bar carries the full layer name in a
``<title>`` (shown on hover in the page)."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence

KEPT_COLOR, INT8_COLOR, GAIN_COLOR = "#d62728", "#1f77b4", "#2ca02c"
MAX_LABELLED = 60  # ops with a tick label; past that every k-th op and all kept ones


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def short_name(node: str, width: int = 22) -> str:
    """The readable end of a TFLite tensor name: the first of ``a;b`` fused names, its last two path parts."""
    first = node.split(";")[0]
    parts = [p for p in first.split("/") if p]
    tail = "/".join(parts[-2:]) if parts else first
    return tail if len(tail) <= width else "…" + tail[-(width - 1):]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _labelled(rows: Sequence[Mapping]) -> list[int]:
    n = len(rows)
    if n <= MAX_LABELLED:
        return list(range(n))
    step = -(-n // MAX_LABELLED)
    return sorted({*range(0, n, step), *(i for i, r in enumerate(rows) if r.get("kept"))})


def sensitivity_figure(rows: Sequence[Mapping], title: str):
    """The matplotlib figure: per-op scaled int8 error (bars, kept ops red), the whole-model gain of
    keeping an op float where it was measured (green dots)."""
    import numpy as np

    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(min(max(8.0, n * 0.16), 40.0), 5.8), dpi=100)
    err = np.array([r.get("scaled_rmse") or 0.0 for r in rows], dtype=float)
    colors = [KEPT_COLOR if r.get("kept") else INT8_COLOR for r in rows]
    bars = ax.bar(np.arange(n), err, color=colors, width=0.85)
    for i, b in enumerate(bars):
        b.set_gid(f"op-{i}")
    positive = err[err > 0]
    if positive.size and positive.max() / positive.min() > 30:  # errors spanning decades: log, from the smallest
        ax.set_yscale("log")
        ax.set_ylim(bottom=positive.min() * 0.7, top=positive.max() * 1.5)
    elif positive.size:  # start where the data does, not at zero
        lo, hi = float(positive.min()), float(err.max())
        ax.set_ylim(bottom=max(0.0, lo - 0.1 * (hi - lo) - 1e-9), top=hi + 0.05 * (hi - lo) + 1e-9)
    ax.set_ylabel("RMSE / scale (int8 steps)")
    ax.set_xlabel("op type and layer, in execution order (red: kept out of int8)")
    ax.set_title(title, fontsize=9, parse_math=False)
    ticks = _labelled(rows)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{rows[i].get('op', '?')} {short_name(str(rows[i].get('node', '')))}" for i in ticks],
                       rotation=90, fontsize=6, parse_math=False)
    for i, lab in zip(ticks, ax.get_xticklabels()):
        if rows[i].get("kept"):
            lab.set_color(KEPT_COLOR)
    gains = [(i, r["gain"]) for i, r in enumerate(rows) if r.get("gain") is not None]
    if gains:
        ax2 = ax.twinx()
        ax2.plot([g[0] for g in gains], [g[1] for g in gains], "o", color=GAIN_COLOR, ms=4)
        ax2.axhline(0.0, color=GAIN_COLOR, lw=0.5, ls=":")
        ax2.set_ylabel("budget gain if kept float (dB / pp)", color=GAIN_COLOR)
    ax.set_xlim(-0.6, n - 0.4)
    fig.tight_layout()
    return fig


def sensitivity_png(rows: Sequence[Mapping], title: str) -> bytes:
    """The chart as the bundle's ``sensitivity.png``."""
    fig = sensitivity_figure(rows, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def sensitivity_svg(rows: Sequence[Mapping], title: str) -> str:
    """The chart as inline SVG: text stays text, and each bar's group carries a ``<title>`` with the
    op's full name, error and precision."""
    import matplotlib

    fig = sensitivity_figure(rows, title)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgepack"}):
        fig.savefig(buf, format="svg")
    _pyplot().close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # the XML prolog and DOCTYPE do not belong inside HTML

    def titled(m: re.Match) -> str:
        r = rows[int(m.group(1))]
        err = r.get("scaled_rmse")
        tip = (f"#{r.get('index', m.group(1))} {r.get('op', '?')} {r.get('node', '')}\n"
               f"RMSE/scale {'–' if err is None else f'{err:.3g}'}"
               + (f", kept {r['kept']}" if r.get("kept") else ", int8"))
        return f'{m.group(0)}<title>{html.escape(tip)}</title>'

    return re.sub(r'<g id="op-(\d+)">', titled, svg)


def curves_png(history: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Fine-tuning curves per epoch: the losses on the left, the held-out metrics on the right."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    losses = {k: v for k, v in history.items() if "loss" in k}
    others = {k: v for k, v in history.items() if "loss" not in k}
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(9 if others else 5, 3.2), dpi=90, squeeze=False)
    for ax, series, label in ((axes[0][0], losses, "loss"), *(((axes[0][1], others, "metric"),) if others else ())):
        for name, values in series.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
