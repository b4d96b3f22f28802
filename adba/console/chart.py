"""The overview's status-over-time chart: stacked bars drawn on the server as inline SVG.
Each status has a colour *and* a fill pattern, every bar a text title, and the page shows the
same numbers as a table, so nothing is told by colour alone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

__all__ = ["STATUSES", "status_chart"]

#: worst first, as the inventory orders them; (colour, pattern id)
STATUSES: dict[str, tuple[str, str]] = {
    "unreachable": ("#6b6b6b", "dots"),
    "unlicensed": ("#b3261e", "cross"),
    "notification": ("#c25e00", "diag"),
    "grace": ("#8a6d00", "horiz"),
    "licensed": ("#1b6e3a", "solid"),
    "unknown": ("#9aa0a6", "vert"),
}

_PATTERNS = """<defs>
<pattern id="p-dots" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#6b6b6b"/><circle cx="3" cy="3" r="1.3" fill="#fff"/></pattern>
<pattern id="p-cross" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#b3261e"/><path d="M0 0L6 6M6 0L0 6" stroke="#fff" stroke-width="1"/></pattern>
<pattern id="p-diag" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#c25e00"/><path d="M0 6L6 0" stroke="#fff" stroke-width="1"/></pattern>
<pattern id="p-horiz" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#8a6d00"/><path d="M0 3H6" stroke="#fff" stroke-width="1"/></pattern>
<pattern id="p-vert" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#9aa0a6"/><path d="M3 0V6" stroke="#fff" stroke-width="1"/></pattern>
</defs>"""


def _fill(status: str) -> str:
    colour, pattern = STATUSES.get(status, STATUSES["unknown"])
    return colour if pattern == "solid" else f"url(#p-{pattern})"


def status_chart(runs: Sequence[dict[str, Any]], *, width: int = 600, height: int = 200) -> Markup:
    """``runs``: :meth:`InventoryDB.status_over_time` (newest first); oldest drawn left."""
    ordered = list(reversed(runs))
    if not ordered:
        return Markup(
            '<p class="muted">No collection yet: run <code>adba inventory collect</code>.</p>'
        )
    top = max(sum(r["counts"].values()) for r in ordered) or 1
    plot_h = height - 30
    slot = width / len(ordered)
    bar = max(2.0, min(40.0, slot * 0.7))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">Machines by status in the last {len(ordered)} collections</title>',
        _PATTERNS,
        f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#444"/>',
        f'<text x="2" y="12" font-size="11">{top}</text>',
    ]
    for i, run in enumerate(ordered):
        x = i * slot + (slot - bar) / 2
        y = float(plot_h)
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(run["at"]))
        for status in STATUSES:
            n = int(run["counts"].get(status, 0))
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{_fill(status)}" stroke="#fff" stroke-width="0.5">'
                f"<title>{escape(when)}: {escape(status)} {n}</title></rect>"
            )
    first = time.strftime("%Y-%m-%d", time.gmtime(ordered[0]["at"]))
    last = time.strftime("%Y-%m-%d", time.gmtime(ordered[-1]["at"]))
    parts.append(f'<text x="2" y="{height - 8}" font-size="11">{first}</text>')
    parts.append(
        f'<text x="{width - 2}" y="{height - 8}" font-size="11" text-anchor="end">{last}</text>'
    )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg width="14" height="14" aria-hidden="true"><rect width="14" height="14" '
        f'fill="{_fill(s)}"/></svg> {escape(s)}</li>'
        for s in STATUSES
    )
    # the legend's swatches reuse the patterns defined in the chart above (one document)
    return Markup("".join(parts) + f'<ul class="legend">{legend}</ul>')
