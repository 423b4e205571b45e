"""Small inline SVG charts for the HTML report: lines with marked points, strips of points, bars.

Each function returns one ``<svg>`` element as text, sized by a viewBox so that it scales to the page
width on screen and on A4. Text is escaped; numbers are rounded to keep the file small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 520, 260
LEFT, RIGHT, TOP, BOTTOM = 54, 14, 46, 44
LEGEND_Y = 31  # between the title and the plot, so it never hides a curve
FEW_POINTS = 12
COLORS = {"erm": "#636efa", "masktune": "#ef553b", "randmask": "#7f7f7f", "val": "#00a087", "test": "#ef553b"}


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = "#444"
    dashed: bool = False


@dataclass
class Marker:
    x: float
    y: float
    label: str
    color: str = "#000"


@dataclass
class Axes:
    title: str
    x_label: str
    y_label: str
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    percent_y: bool = False
    percent_x: bool = False
    vlines: list[tuple[float, str]] = field(default_factory=list)


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float, percent: bool) -> str:
    if percent:
        return f"{round(100 * value, 1):g}%"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _extent(values: list[float], given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        return given
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (0.0, 1.0)
    lo, hi = min(finite), max(finite)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)  # a point on the extreme value must not sit on the frame
    return lo - pad, hi + pad


class _Frame:
    """Maps data to pixels and draws the axes, grid and title."""

    def __init__(self, axes: Axes, xs: list[float], ys: list[float]) -> None:
        self.axes = axes
        self.x0, self.x1 = _extent(xs, axes.x_range)
        self.y0, self.y1 = _extent(ys, axes.y_range)
        self.parts: list[str] = []

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def draw_axes(self, x_ticks: bool = True) -> None:
        a = self.axes
        p = self.parts
        p.append(f'<text x="{WIDTH / 2}" y="15" class="t">{escape(a.title)}</text>')
        for y in _ticks(self.y0, self.y1):
            yy = _f(self.py(y))
            p.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy}" y2="{yy}" class="g"/>')
            p.append(f'<text x="{LEFT - 4}" y="{yy}" class="yt">{_label(y, a.percent_y)}</text>')
        if x_ticks:
            for x in _ticks(self.x0, self.x1):
                xx = _f(self.px(x))
                p.append(
                    f'<text x="{xx}" y="{HEIGHT - BOTTOM + 14}" class="xt">{_label(x, a.percent_x)}</text>'
                )
        p.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" '
            'class="ax"/>'
        )
        p.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" class="ax"/>')
        p.append(
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" class="xl">{escape(a.x_label)}</text>'
        )
        p.append(
            f'<text transform="translate(12 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" class="xl">'
            f"{escape(a.y_label)}</text>"
        )
        for x, text in a.vlines:
            xx = _f(self.px(x))
            p.append(f'<line x1="{xx}" x2="{xx}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" class="v"/>')
            p.append(
                f'<text x="{float(xx) + 3:.1f}" y="{HEIGHT - BOTTOM - 4}" class="vl">{escape(text)}</text>'
            )

    def svg(self, legend: list[tuple[str, str, bool]]) -> str:
        x = LEFT + 6
        for label, color, dashed in legend:
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            self.parts.append(
                f'<line x1="{x}" x2="{x + 16}" y1="{LEGEND_Y - 3}" y2="{LEGEND_Y - 3}" stroke="{color}" '
                f'stroke-width="2"{dash}/>'
                f'<text x="{x + 20}" y="{LEGEND_Y}" class="lg">{escape(label)}</text>'
            )
            x += 28 + 6.2 * len(label)
        body = "".join(self.parts)
        title = escape(self.axes.title)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{title}" class="chart">{body}</svg>'
        )


def line_chart(axes: Axes, series: Sequence[Series], markers: Sequence[Marker] = ()) -> str:
    """Lines (one per series) and labelled points, e.g. a risk-coverage curve with operating points."""
    xs = [float(v) for s in series for v in s.x] + [m.x for m in markers]
    ys = [float(v) for s in series for v in s.y] + [m.y for m in markers]
    frame = _Frame(axes, xs, ys)
    frame.draw_axes()
    for s in series:
        points = " ".join(
            f"{_f(frame.px(x))},{_f(frame.py(y))}"
            for x, y in zip(s.x, s.y, strict=True)
            if math.isfinite(x) and math.isfinite(y)
        )
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        frame.parts.append(
            f'<polyline points="{points}" fill="none" stroke="{s.color}" stroke-width="1.8"{dash}/>'
        )
        if len(s.x) <= FEW_POINTS:  # a curve of a few epochs: show its points; a single one has no line
            frame.parts.extend(
                f'<circle cx="{_f(frame.px(x))}" cy="{_f(frame.py(y))}" r="3" fill="{s.color}"/>'
                for x, y in zip(s.x, s.y, strict=True)
                if math.isfinite(x) and math.isfinite(y)
            )
    for i, m in enumerate(markers):
        x, y = _f(frame.px(m.x)), _f(frame.py(m.y))
        # Labels beside their point, on the side with room, staggered away from the nearer edge, so
        # points close together stay readable.
        dy = 4 + 11 * i if float(y) < (TOP + HEIGHT - BOTTOM) / 2 else 4 - 11 * (len(markers) - 1 - i)
        left = float(x) > (LEFT + WIDTH - RIGHT) / 2
        anchor, dx = ("end", -7) if left else ("start", 7)
        frame.parts.append(
            f'<circle cx="{x}" cy="{y}" r="4" fill="{m.color}" stroke="#fff"/>'
            f'<text x="{float(x) + dx:.1f}" y="{float(y) + dy:.1f}" class="mr" text-anchor="{anchor}">'
            f"{escape(m.label)}</text>"
        )
    return frame.svg([(s.label, s.color, s.dashed) for s in series])


def strip_chart(axes: Axes, columns: Sequence[tuple[str, Sequence[float], str]]) -> str:
    """One column per (label, values, color): a point per value (per seed) and a bar at their mean."""
    ys = [float(v) for _, values, _ in columns for v in values]
    frame = _Frame(axes, [0.0, float(len(columns))], ys)
    frame.x0, frame.x1 = 0.0, float(len(columns))
    frame.draw_axes(x_ticks=False)
    for i, (label, values, color) in enumerate(columns):
        centre = frame.px(i + 0.5)
        frame.parts.append(
            f'<text x="{_f(centre)}" y="{HEIGHT - BOTTOM + 14}" class="xt">{escape(label)}</text>'
        )
        for j, v in enumerate(values):
            offset = (j - (len(values) - 1) / 2) * 7
            frame.parts.append(
                f'<circle cx="{_f(centre + offset)}" cy="{_f(frame.py(v))}" r="4.5" fill="{color}" '
                f'fill-opacity="0.75"><title>{_label(v, axes.percent_y)}</title></circle>'
            )
        if values:
            mean = sum(values) / len(values)
            y = _f(frame.py(mean))
            frame.parts.append(
                f'<line x1="{_f(centre - 24)}" x2="{_f(centre + 24)}" y1="{y}" y2="{y}" stroke="#222" '
                'stroke-width="2"/>'
            )
    return frame.svg([])


def bar_chart(axes: Axes, bars: Sequence[tuple[str, float, str]]) -> str:
    """Vertical bars, one per (label, value, color), each with its value above it."""
    frame = _Frame(axes, [0.0, float(len(bars))], [0.0] + [v for _, v, _ in bars])
    frame.x0, frame.x1 = 0.0, float(max(len(bars), 1))
    frame.y0, frame.y1 = 0.0, frame.y1 * 1.12  # bars start at zero; room above for their values
    frame.draw_axes(x_ticks=False)
    width = (WIDTH - LEFT - RIGHT) / max(len(bars), 1) * 0.6
    for i, (label, value, color) in enumerate(bars):
        centre = frame.px(i + 0.5)
        top, base = frame.py(value), frame.py(0.0)
        frame.parts.append(
            f'<rect x="{_f(centre - width / 2)}" y="{_f(top)}" width="{_f(width)}" height="{_f(base - top)}" '
            f'fill="{color}"/>'
            f'<text x="{_f(centre)}" y="{_f(top - 4)}" '
            f'class="ml">{escape(_label(value, axes.percent_y))}</text>'
            f'<text x="{_f(centre)}" y="{HEIGHT - BOTTOM + 14}" class="xt">{escape(label)}</text>'
        )
    return frame.svg([])


# Shared by every chart in the page (inline <style> in the report's head).
CSS = """
svg.chart{width:100%;height:auto;max-width:560px;font-family:inherit}
svg.chart text{font-size:10px;fill:#333}
svg.chart .t{font-size:12px;font-weight:600;text-anchor:middle}
svg.chart .yt{text-anchor:end;dominant-baseline:middle}
svg.chart .xt,svg.chart .xl,svg.chart .ml{text-anchor:middle}
svg.chart .vl{text-anchor:start;font-size:9px;fill:#666}
svg.chart .mr{font-size:9.5px;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg.chart .g{stroke:#e5e5e5}
svg.chart .ax{stroke:#888}
svg.chart .v{stroke:#999;stroke-dasharray:3 3}
"""
