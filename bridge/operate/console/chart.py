"""Stacked bar charts as SVG, drawn by the server: the console's pictures need no chart library
in the browser (and its Content-Security-Policy allows none from elsewhere).

A chart is a list of buckets (one per minute, or per few minutes), each a count per series; the
bars stack the series in a fixed order with fixed colours, so "rejected" is the same red on every
chart. Every figure is escaped: series and labels may come from config (source names).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

COLOURS = {
    "accepted": "#2f855a", "duplicate": "#b7791f", "rejected": "#c53030",
    "delivered": "#2f855a", "retried": "#b7791f", "dead": "#c53030",
}
FALLBACK = ("#2b6cb0", "#6b46c1", "#319795", "#718096")


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    series: Sequence[str]  # stacking order, bottom first
    start: float  # the first bucket's time (epoch seconds)
    step: float  # seconds per bucket
    buckets: Sequence[Mapping[str, int]]


def svg(chart: Chart, width: int = 720, height: int = 160) -> str:
    left, bottom, top = 44, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(b.get(s, 0) for s in chart.series) for b in chart.buckets]
    peak = max(totals, default=0) or 1
    n = max(1, len(chart.buckets))
    bar = plot_w / n
    colour = {s: COLOURS.get(s, FALLBACK[i % len(FALLBACK)]) for i, s in enumerate(chart.series)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="100%" preserveAspectRatio="xMinYMin meet" role="img" '
             f'aria-label="{escape(chart.title)}: {sum(totals)} in all, at most {peak} '
             f'per bucket">',
             f'<title>{escape(chart.title)}</title>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
             f'stroke="#a0aec0"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" font-size="10">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10">0</text>']
    for i, bucket in enumerate(chart.buckets):
        y: float = top + plot_h
        for name in chart.series:
            count = bucket.get(name, 0)
            if not count:
                continue
            h = count / peak * plot_h
            y -= h
            at = time.strftime("%H:%M", time.gmtime(chart.start + i * chart.step))
            parts.append(f'<rect x="{left + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}"'
                         f' height="{h:.1f}" fill="{colour[name]}"><title>{at} UTC '
                         f'{escape(name)}: {count}</title></rect>')
    for i in range(0, n, max(1, n // 6)):  # a few time labels along the axis
        at = time.strftime("%H:%M", time.gmtime(chart.start + i * chart.step))
        parts.append(f'<text x="{left + i * bar:.1f}" y="{height - 6}" font-size="10">{at}</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[str]) -> list[tuple[str, str]]:
    """(name, colour) for each series, for the page to print beside the chart."""
    return [(s, COLOURS.get(s, FALLBACK[i % len(FALLBACK)])) for i, s in enumerate(series)]
