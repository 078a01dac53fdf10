"""The pages' charts, drawn on the server as inline SVG: no script library, nothing loaded from elsewhere,
and a page that shows its chart with scripts off. Every label is escaped; each mark carries a class and
data attributes, so that a test (and a reader of the source) can count what was drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# One colour per source of a block's row (the legend's order).
SOURCE_COLOURS = {
    "measured in context": "#1f77b4",
    "measured alone": "#6baed6",
    "transferred": "#ff7f0e",
    "predicted": "#9467bd",
}


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    low: float | None = None
    high: float | None = None
    group: str = ""  # the legend entry (a source), or empty
    title: str = ""  # the hover text


def _ticks(top: float, count: int = 5, bottom: float = 0.0) -> list[float]:
    """Round values from `bottom` to `top`, about `count` of them."""
    if top <= bottom:
        return [bottom]
    raw = (top - bottom) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    first = math.ceil(bottom / step)
    return [round(i * step, 10) for i in range(first, math.floor(top / step) + 1)]


def bar_chart(bars: Sequence[Bar], unit: str, colours: dict[str, str] | None = None, width: int = 960) -> str:
    """Vertical bars in the given order, each with its interval as a whisker, coloured by group."""
    colours = colours or {}
    height, left, bottom, top_pad = 320, 56, 28, 12
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max([b.high or b.value for b in bars] + [1e-9]) * 1.05
    step = plot_w / max(len(bars), 1)
    y = lambda v: top_pad + plot_h * (1 - v / top)  # noqa: E731
    parts = [
        f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{len(bars)} bars, {escape(unit)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in _ticks(top):
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text class="axis" x="14" y="{top_pad + plot_h / 2:.0f}" transform="rotate(-90 14 '
        f'{top_pad + plot_h / 2:.0f})" text-anchor="middle">{escape(unit)}</text>'
    )
    for i, bar in enumerate(bars):
        x = left + i * step + step * 0.1
        w = max(step * 0.8, 1.0)
        colour = colours.get(bar.group, "#1f77b4")
        parts.append(
            f'<rect class="bar" data-group="{escape(bar.group)}" data-value="{bar.value:.6g}" x="{x:.1f}" '
            f'y="{y(bar.value):.1f}" width="{w:.1f}" height="{max(plot_h + top_pad - y(bar.value), 0.5):.1f}" '
            f'fill="{colour}"><title>{escape(bar.title or f"{bar.label}: {bar.value:.4g} {unit}")}</title></rect>'
        )
        if bar.low is not None and bar.high is not None:
            cx = x + w / 2
            parts.append(
                f'<line class="whisker" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(bar.low):.1f}" y2="{y(bar.high):.1f}"/>'
            )
        if len(bars) <= 40 or i % max(len(bars) // 40, 1) == 0:
            parts.append(
                f'<text class="tick" x="{x + w / 2:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{escape(bar.label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def legend(colours: dict[str, str], shown: Sequence[str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{colours[name]}"></i>{escape(name)}</span>'
        for name in colours
        if name in shown
    )
    return f'<p class="legend">{items}</p>'


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    highlight: bool = False  # drawn in the accent colour (on the Pareto front)


def scatter(
    points: Sequence[Point],
    x_unit: str,
    y_unit: str,
    line: Sequence[Point] = (),
    band: float | None = None,
    width: int = 560,
) -> str:
    """Points with labels; `line` joins points (a Pareto front); `band`: the y = x line and its +-band (a
    share), for estimate against measured."""
    height, left, bottom, pad = 380, 56, 40, 14
    plot_w, plot_h = width - left - pad, height - bottom - pad
    xs, ys = [p.x for p in points] or [0.0], [p.y for p in points] or [0.0]
    if band is not None:
        low = min(xs + ys) * 0.9
        high = max(xs + ys) * 1.1
        x0, x1, y0, y1 = low, high, low, high
    else:
        x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
        x0, x1 = min(xs) - 0.08 * x_span, max(xs) + 0.08 * x_span
        y0, y1 = min(ys) - 0.1 * y_span, max(ys) + 0.1 * y_span
    sx = lambda v: left + plot_w * (v - x0) / ((x1 - x0) or 1.0)  # noqa: E731
    sy = lambda v: pad + plot_h * (1 - (v - y0) / ((y1 - y0) or 1.0))  # noqa: E731
    parts = [
        f'<svg class="chart scatter" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{len(points)} points" xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="frame" x="{left}" y="{pad}" width="{plot_w}" height="{plot_h}"/>',
    ]
    if band is not None:
        corners = [(x0, x0 * (1 + band)), (x1, x1 * (1 + band)), (x1, x1 * (1 - band)), (x0, x0 * (1 - band))]
        parts.append(
            '<polygon class="band" points="' + " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in corners) + '"/>'
            f'<line class="diagonal" x1="{sx(x0):.1f}" y1="{sy(x0):.1f}" x2="{sx(x1):.1f}" y2="{sy(x1):.1f}"/>'
        )
    if line:
        parts.append(
            '<polyline class="front" points="' + " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in line) + '"/>'
        )
    for p in points:
        parts.append(
            f'<circle class="point{" on" if p.highlight else ""}" cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="5">'
            f"<title>{escape(p.label)}: {p.x:.4g} {escape(x_unit)}, {p.y:.4g} {escape(y_unit)}</title></circle>"
            f'<text class="label" x="{sx(p.x) + 7:.1f}" y="{sy(p.y) + 4:.1f}">{escape(p.label)}</text>'
        )
    parts.append(
        f'<text class="axis" x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle">{escape(x_unit)}</text>'
        f'<text class="axis" x="14" y="{pad + plot_h / 2:.0f}" transform="rotate(-90 14 {pad + plot_h / 2:.0f})" '
        f'text-anchor="middle">{escape(y_unit)}</text>'
    )
    for tick in _ticks(x1, bottom=x0):
        parts.append(
            f'<text class="tick" x="{sx(tick):.1f}" y="{pad + plot_h + 16}" text-anchor="middle">{tick:g}</text>'
        )
    for tick in _ticks(y1, bottom=y0):
        parts.append(f'<text class="tick" x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append("</svg>")
    return "".join(parts)
