"""Rate-distortion curves as an inline SVG element, for pages that must carry their own plots.

matplotlib is an optional extra and writes files; the ``--html`` comparison page needs a chart that
is part of the page text, draws the same series as ``--plot`` (:func:`ckbd.tools.rd_eval.rd_plot_curves`)
with the same axes rule (:func:`ckbd.tools.report.plots.fitted_axes`: fitted to the models, not to
the Pillow sweep), and needs nothing installed.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from html import escape

#: matplotlib's tab10, so the page's colours match the PNG plots'.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_MARGIN = (58, 16, 16, 46)  # left, right, top, bottom: room for the tick labels and axis titles


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering ``[low, high]``: the step of 1, 2 or 5 times a power of ten that
    gives the number of ticks nearest ``count``."""
    span = high - low
    if not span > 0:
        return [low]
    power = 10.0 ** math.floor(math.log10(span / count))
    steps = [m * power for m in (1, 2, 5, 10)]
    step = min(steps, key=lambda s: abs(span / s - count))
    ticks = []
    value = math.ceil(low / step - 1e-9) * step
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def rd_svg(curves: dict[str, list[tuple[float, float]]], chart_id: str, references: Collection[str] = (),
           x_label: str = "bits per pixel", y_label: str = "PSNR (dB)", width: int = 560, height: int = 400) -> str:
    """One ``<svg>`` with a polyline per series (``references`` dashed) and a legend in the corner RD
    curves leave empty (bottom right); ``chart_id`` must be unique in the page.

    Points that cannot be drawn (a lossless result's infinite PSNR) are left out.
    """
    from ckbd.tools.report.plots import fitted_axes

    series = {label: sorted(p for p in pts if all(math.isfinite(v) for v in p)) for label, pts in curves.items()}
    series = {label: pts for label, pts in series.items() if pts}
    every = [p for pts in series.values() for p in pts]
    if not every:
        return f'<svg width="{width}" height="60"><text x="10" y="30">' \
               "no finite points to plot</text></svg>"
    focus = [p for label, pts in series.items() if label not in references for p in pts]
    if focus and len(focus) < len(every):
        (x_lo, x_hi), (y_lo, y_hi) = fitted_axes(focus, every)
    else:
        x_lo, x_hi = 0.0, 1.05 * max(x for x, _ in every)
        ys = [y for _, y in every]
        pad = 0.05 * (max(ys) - min(ys) or 1.0)
        y_lo, y_hi = min(ys) - pad, max(ys) + pad
    left, right, top, bottom = _MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * plot_w

    def sy(y: float) -> float:
        return top + (y_hi - y) / ((y_hi - y_lo) or 1.0) * plot_h

    parts = [f'<svg class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(y_label)} against {escape(x_label)}">',
             f'<defs><clipPath id="clip-{chart_id}"><rect x="{left}" y="{top}" width="{plot_w}" '
             f'height="{plot_h}"/></clipPath></defs>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>']
    for x in nice_ticks(x_lo, x_hi):
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>'
                     f'<text x="{sx(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{x:g}</text>')
    for y in nice_ticks(y_lo, y_hi):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_label)}</text>")
    parts.append(f'<g clip-path="url(#clip-{chart_id})">')
    for i, (label, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5 4"' if label in references else ""
        radius = 2.5 if label in references else 4
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{radius}" fill="{colour}">'
                  f"<title>{escape(label)}: {x:.4f} bpp, {y:.4g}</title></circle>" for x, y in pts]
    parts.append("</g>")
    box_h = 16 * len(series) + 8
    box_x, box_y = left + plot_w - 200, top + plot_h - box_h - 6
    parts.append(f'<rect x="{box_x}" y="{box_y}" width="194" height="{box_h}" fill="#fff" fill-opacity="0.85" '
                 'stroke="#ccc"/>')
    for i, label in enumerate(series):
        colour, y = PALETTE[i % len(PALETTE)], box_y + 16 + 16 * i
        dash = ' stroke-dasharray="5 4"' if label in references else ""
        parts.append(f'<line x1="{box_x + 6}" x2="{box_x + 28}" y1="{y - 4}" y2="{y - 4}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{box_x + 34}" y="{y}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
