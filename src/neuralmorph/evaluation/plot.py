"""Standalone SVG line charts (loss curves, error vs. iteration) with nothing but the standard library.

The SVG is a self-contained string: inline it into the HTML report or write it to a .svg file. NaN
(or, on a log axis, non-positive) values break a line into separate runs instead of dropping to zero.
"""

from __future__ import annotations

import math
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

# a categorical palette, distinct in hue and in lightness so series stay apart in grey-scale print too
PALETTE = ("#2f6db5", "#e0771b", "#2a9d5b", "#c8364a", "#7b58b0", "#8c6239", "#d05fa6", "#5f6b73")
_FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
_MAX_MARKERS = 60  # beyond this many points per series, markers are clutter: draw the line only


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About `target` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:  # a flat series: open a unit-sized window around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target, 1)
    k = math.floor(math.log10(raw))
    step = next(m * 10**k for m in (1, 2, 2.5, 5, 10) if m * 10**k >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    n = int(round((last - first) / step))
    return [_clean(first + i * step) for i in range(n + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis covering [lo, hi] (both > 0): powers of ten, with 2 and 5 for short ranges."""
    a, b = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    if b == a:
        b = a + 1
    mults = (1, 2, 5) if b - a <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(a, b + 1) for m in mults]
    ticks = [t for t in ticks if t <= 10.0**b * (1 + 1e-9)]
    # keep the window tight: drop sub-ticks outside the data, but always keep the bracketing decades
    inner = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    below = [t for t in ticks if t < lo * (1 - 1e-9)]
    above = [t for t in ticks if t > hi * (1 + 1e-9)]
    return ([below[-1]] if below else []) + inner + ([above[0]] if above else [])


def _clean(x: float) -> float:
    """Round away float noise from tick arithmetic (0.30000000000000004 -> 0.3)."""
    return float(f"{x:.12g}")


def _fmt(x: float, ticks: Sequence[float]) -> str:
    """A tick label with as many decimals as the tick spacing needs (and no more)."""
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1e5 or ax < 1e-3:
        return f"{x:.3g}".replace("e+0", "e").replace("e-0", "e-")
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:]) if b != a), default=ax)
    step = min(step, ax)  # log ticks: spacing varies, the value itself bounds the decimals needed
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * step:
        decimals += 1
    return f"{x:,.{decimals}f}"


def _segments(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Index runs (each (K,) int) of consecutive finite (x, y) pairs: NaN gaps split a line."""
    ok = np.isfinite(x) & np.isfinite(y)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    return np.split(idx, breaks)


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def line_plot_svg(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
                  ylabel: str, width: int = 480, height: int = 320, log_y: bool = False) -> str:
    """A standalone SVG line chart: one coloured line with markers per series, axes, round ticks, legend.

    series: name -> (x (N,) float, y (N,) float), equal lengths; NaN/inf (and y <= 0 when log_y) leave
        gaps. Series are drawn in insertion order with the colours of PALETTE (cycled).
    width, height: pixel size of the SVG. log_y: logarithmic y axis.
    Returns the SVG document as a string (no XML declaration, so it can be inlined into HTML as is).
    """
    data = []
    for name, (xs, ys) in series.items():
        x = np.asarray(xs, dtype=np.float64).reshape(-1)
        y = np.asarray(ys, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: x has {len(x)} values, y has {len(y)}")
        if log_y:
            with np.errstate(invalid="ignore"):
                y = np.where(y > 0, y, np.nan)
        data.append((str(name), x, y))

    # legend rows first: their height decides where the plot area starts
    char_w = 6.6  # average glyph width of a 12 px sans-serif, for laying out the legend
    legend_rows: list[list[tuple[int, str, float]]] = [[]]
    row_w = 0.0
    for i, (name, _, _) in enumerate(data):
        w = 26 + char_w * len(name) + 14
        if legend_rows[-1] and row_w + w > width - 60:
            legend_rows.append([])
            row_w = 0.0
        legend_rows[-1].append((i, name, row_w))
        row_w += w
    n_legend = len(legend_rows) if data else 0
    top = 30 + 18 * n_legend + 8
    left, right, bottom = 62, 16, 46
    pw, ph = max(width - left - right, 10), max(height - top - bottom, 10)

    xs_all = np.concatenate([x[np.isfinite(x) & np.isfinite(y)] for _, x, y in data] or [np.zeros(0)])
    ys_all = np.concatenate([y[np.isfinite(x) & np.isfinite(y)] for _, x, y in data] or [np.zeros(0)])
    if len(xs_all) == 0:
        xs_all, ys_all = np.array([0.0, 1.0]), (np.array([1.0, 10.0]) if log_y else np.array([0.0, 1.0]))
    xt = nice_ticks(float(xs_all.min()), float(xs_all.max()))
    if log_y:
        yt = _log_ticks(float(ys_all.min()), float(ys_all.max()))
        fy = lambda v: np.log10(v)
    else:
        yt = nice_ticks(float(ys_all.min()), float(ys_all.max()))
        fy = lambda v: v
    x0, x1 = xt[0], xt[-1]
    y0, y1 = fy(yt[0]), fy(yt[-1])
    sx = lambda v: left + (v - x0) / (x1 - x0) * pw
    sy = lambda v: top + ph - (fy(v) - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family={quoteattr(_FONT)} font-size="12" role="img">',
           f"<title>{escape(title)}</title>",
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="600" fill="#1f2328">{escape(title)}</text>']
    # grid and ticks
    out.append('<g stroke="#e6e8eb" stroke-width="1">')
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_num(sy(t))}" y2="{_num(sy(t))}"/>')
    for t in xt:
        out.append(f'<line x1="{_num(sx(t))}" x2="{_num(sx(t))}" y1="{top}" y2="{top + ph}"/>')
    out.append("</g>")
    out.append('<g fill="#57606a" font-size="11">')
    for t in yt:
        # log ticks are uneven: each label gets the decimals its own value needs
        label = _fmt(t, [t] if log_y else yt)
        out.append(f'<text x="{left - 6}" y="{_num(sy(t) + 4)}" text-anchor="end">{escape(label)}</text>')
    for t in xt:
        out.append(f'<text x="{_num(sx(t))}" y="{top + ph + 16}" text-anchor="middle">{escape(_fmt(t, xt))}</text>')
    out.append("</g>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#8c959f"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#1f2328">'
               f"{escape(xlabel)}</text>")
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'fill="#1f2328">{escape(ylabel)}</text>')
    # one <path> per series (a NaN gap starts a new sub-path), markers on top
    for i, (name, x, y) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        segs = _segments(x, y)
        d = " ".join("M" + " L".join(f"{_num(sx(x[k]))},{_num(sy(y[k]))}" for k in seg) for seg in segs)
        out.append(f'<g class="series" data-name={quoteattr(name)}><title>{escape(name)}</title>')
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" '
                   f'stroke-linejoin="round" stroke-linecap="round"/>')
        n_points = sum(len(s) for s in segs)
        if n_points <= _MAX_MARKERS:
            for seg in segs:
                for k in seg:
                    out.append(f'<circle cx="{_num(sx(x[k]))}" cy="{_num(sy(y[k]))}" r="3" fill="{color}" '
                               f'stroke="#ffffff" stroke-width="1"/>')
        out.append("</g>")
    # legend
    for r, row in enumerate(legend_rows if data else []):
        y = 30 + 18 * r + 9
        for i, name, dx in row:
            color = PALETTE[i % len(PALETTE)]
            x = left + dx
            out.append(f'<line x1="{_num(x)}" x2="{_num(x + 18)}" y1="{y}" y2="{y}" stroke="{color}" '
                       'stroke-width="2"/>')
            out.append(f'<circle cx="{_num(x + 9)}" cy="{y}" r="3" fill="{color}"/>')
            out.append(f'<text x="{_num(x + 24)}" y="{y + 4}" fill="#1f2328">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
