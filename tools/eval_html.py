"""The ``ckbd eval --html DIR`` page: look at ckbd beside JPEG and WebP at the same rate.

``DIR/index.html`` carries its own CSS, script and SVG charts and loads nothing from the network;
the images it shows are PNG files in ``DIR/images`` (lossless, so they are the decoded pixels). For
every image and model there is one row: the original, the model's decoded image, and JPEG and WebP
at the Pillow quality whose file comes closest to the model's bpp *on that image* (a bisection over
qualities 1..100, not only the ``--qualities`` sweep), each with its bpp and PSNR beneath. The
images scale to fit side by side; "actual pixels" shows them 1:1 (or enlarged) in panes that
scroll together, so the same detail is in view in all four.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from ckbd.runtime.rate import bits_per_pixel
from ckbd.tools.rd_eval import (
    PILLOW_FORMATS,
    PILLOW_LABELS,
    ImageResult,
    RDPoint,
    RDReport,
    family_bd_rate_lines,
    measure,
    pillow_round_trip,
    rd_plot_curves,
)
from ckbd.tools.svg_chart import rd_svg

PAGE = "index.html"
IMAGE_DIR = "images"
#: Pillow's quality scale, searched for the closest rate.
QUALITY_RANGE = (1, 100)
_FORMAT_NAMES = {"jpeg": "JPEG", "webp": "WebP"}


@dataclass
class View:
    """One shown image: what it is, where its PNG is (relative to the page), and its figures."""

    label: str
    src: str
    result: ImageResult | None = None  # None for the original


@dataclass
class Comparison:
    """One input image: a row of views per model."""

    name: str
    width: int
    height: int
    rows: list[list[View]] = field(default_factory=list)


def matched_quality(image: np.ndarray, fmt: str, target_bpp: float) -> tuple[int, int, np.ndarray]:
    """(quality, file bytes, decoded image) of the ``fmt`` file of ``image`` whose bpp is closest to
    ``target_bpp``: file size grows with quality, so a bisection finds it in about seven round trips."""
    height, width = image.shape[:2]
    lo, hi = QUALITY_RANGE
    best: tuple[float, int, int, np.ndarray] | None = None
    while lo <= hi:
        quality = (lo + hi) // 2
        size, decoded = pillow_round_trip(image, fmt, quality)
        bpp = bits_per_pixel(size, height, width)
        if best is None or abs(bpp - target_bpp) < best[0]:
            best = (abs(bpp - target_bpp), quality, size, decoded)
        if bpp == target_bpp:
            break
        lo, hi = (quality + 1, hi) if bpp < target_bpp else (lo, quality - 1)
    assert best is not None
    return best[1], best[2], best[3]


def _slug(text: str) -> str:
    """A file-name-safe, URL-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


class ComparisonPage:
    """Collects the views while ``evaluate`` runs (:meth:`add` is its ``on_image`` hook), then
    writes the page (:meth:`write`)."""

    def __init__(self, folder: Path, formats: tuple[str, ...] = tuple(PILLOW_FORMATS)) -> None:
        self.folder = Path(folder)
        self.formats = formats
        self.comparisons: list[Comparison] = []
        (self.folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, path: Path, image: np.ndarray, shown: list[tuple[ImageResult, np.ndarray]]) -> None:
        """Write the original, each model's decoded image and the matched JPEG/WebP images as PNG."""
        from ckbd.runtime.imageio import write_image

        height, width = image.shape[:2]
        sub = f"{IMAGE_DIR}/{len(self.comparisons) + 1:02d}-{_slug(Path(path).stem)}"
        (self.folder / sub).mkdir(exist_ok=True)

        def save(name: str, pixels: np.ndarray) -> str:
            write_image(self.folder / sub / name, pixels)
            return f"{sub}/{name}"

        comparison = Comparison(Path(path).name, width, height)
        original = View("original", save("original.png", image))
        for k, (result, decoded) in enumerate(shown, start=1):
            suffix = "" if len(shown) == 1 else f"-{k}"
            row = [original, View("ckbd", save(f"ckbd{suffix}.png", decoded), result)]
            for fmt in self.formats:
                quality, size, pixels = matched_quality(image, fmt, result.bpp)
                row.append(View(f"{_FORMAT_NAMES.get(fmt, fmt)} q{quality}", save(f"{fmt}{suffix}.png", pixels),
                                measure(image, pixels, size, str(path))))
            comparison.rows.append(row)
        self.comparisons.append(comparison)

    def write(self, report: RDReport, join: bool = False) -> Path:
        """Write ``index.html`` (atomically) and return its path."""
        from ckbd.runtime.atomic import atomic_write_bytes

        target = self.folder / PAGE
        atomic_write_bytes(target, render(report, self.comparisons, join).encode("utf-8"))
        return target


# -- rendering ------------------------------------------------------------------------------


def _number(value: float | None, spec: str, unit: str = "", signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "lossless" if unit == " dB" else "inf"
    return format(value, ("+" if signed else "") + spec) + unit


def _figure(view: View, width: int, height: int) -> str:
    r = view.result
    figures = "&nbsp;" if r is None else f"{_number(r.bpp, '.3f', ' bpp')} · {_number(r.psnr, '.2f', ' dB')}"
    title = "" if r is None else f' title="{r.bytes} bytes, MS-SSIM {r.ms_ssim:.4f}"'
    return (f'<figure><div class="pane"><img src="{escape(view.src)}" width="{width}" height="{height}" '
            f'alt="{escape(view.label)}"></div><figcaption{title}><b>{escape(view.label)}</b><br>{figures}'
            "</figcaption></figure>")


def _models_table(report: RDReport) -> str:
    """Each model's averages and its PSNR gain over each Pillow curve at the same bpp, then the notes."""
    formats = list(report.curves)
    gains = {row["label"]: row for row in report.comparisons.get("at_equal_bpp", [])}
    head = "".join(f"<th>vs {escape(_FORMAT_NAMES.get(f, f))}</th>" for f in formats)
    body = "".join(
        f"<tr><td>{escape(m.label)}</td><td>{m.bpp:.4f}</td><td>{_number(m.psnr, '.2f')}</td><td>{m.ms_ssim:.4f}</td>"
        + "".join(f"<td>{_number(gains.get(m.label, {}).get(f'delta_psnr_vs_{f}'), '.2f', ' dB', signed=True)}</td>"
                  for f in formats)
        + "</tr>" for m in report.models)
    notes = family_bd_rate_lines(report.comparisons) + [f"note: {n}" for n in report.comparisons.get("notes", [])]
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return ("<table><thead><tr><th>model</th><th>bpp</th><th>PSNR (dB)</th><th>MS-SSIM</th>"
            f'<th colspan="{len(formats)}">PSNR at equal bpp (interpolated)</th></tr>'
            f"<tr><th></th><th></th><th></th><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f'<ul class="note">{items}</ul>' if items else ""))


def _sweep_table(report: RDReport) -> str:
    """The Pillow quality sweeps, one row per quality, the formats side by side."""
    by_quality: dict[str, dict[str, RDPoint]] = {}
    for fmt, points in report.curves.items():
        for p in points:
            by_quality.setdefault(p.label, {})[fmt] = p
    head = "".join(f'<th colspan="3">{escape(_FORMAT_NAMES.get(f, f))}</th>' for f in report.curves)
    sub = "<th>bpp</th><th>PSNR</th><th>MS-SSIM</th>" * len(report.curves)
    rows = []
    for quality, points in by_quality.items():
        cells = "".join("<td></td>" * 3 if (p := points.get(f)) is None else
                        f"<td>{p.bpp:.4f}</td><td>{_number(p.psnr, '.2f')}</td><td>{p.ms_ssim:.4f}</td>"
                        for f in report.curves)
        rows.append(f"<tr><td>q{escape(quality)}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>quality</th>{head}</tr><tr><th></th>{sub}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _charts(report: RDReport, join: bool) -> str:
    refs = tuple(PILLOW_LABELS.values())
    return "".join(
        rd_svg(rd_plot_curves(report, metric, join=join), f"rd-{metric}", refs, y_label=label)
        for metric, label in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM")))


def render(report: RDReport, comparisons: list[Comparison], join: bool = False) -> str:
    """The whole page as one string (the views' images must already be written)."""
    sections = []
    for n, c in enumerate(comparisons, start=1):
        several = len(c.rows) > 1  # then each row is named after its model
        rows = "".join((f'<p class="model">{escape(model.label)}</p>' if several else "")
                       + '<div class="row">' + "".join(_figure(v, c.width, c.height) for v in row) + "</div>"
                       for model, row in zip(report.models, c.rows))
        sections.append(f'<section id="image-{n}"><h3>{escape(c.name)} <small>{c.width}×{c.height}</small></h3>'
                        f"{rows}</section>")
    names = ", ".join(escape(c.name) for c in comparisons[:6]) + (" …" if len(comparisons) > 6 else "")
    return _TEMPLATE.format(
        count=len(report.images), plural="" if len(report.images) == 1 else "s", names=names,
        style=_STYLE, script=_SCRIPT, charts=_charts(report, join), models=_models_table(report),
        sweeps=_sweep_table(report), sections="\n".join(sections))


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1600px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; }
small, .note { color: #666; font-weight: normal; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } .chart text { font-size: 11px; fill: #333; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 2px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; } tbody tr:nth-child(odd) { background: #f4f4f4; }
th[colspan] { text-align: center; border-bottom: 1px solid #ccc; }
.controls { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #ddd; z-index: 1; }
.row { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; margin-bottom: 12px; }
.model { margin: 4px 0; font-weight: bold; }
figure { margin: 0; } figcaption { font-size: 12px; text-align: center; padding-top: 2px; }
.pane { overflow: auto; max-height: 75vh; border: 1px solid #ccc; background: #eee; }
.pane img { display: block; width: 100%; height: auto; }
body.zoomed .pane img { max-width: none; image-rendering: pixelated; }
"""

_SCRIPT = """
(function () {
  var zoom = document.getElementById("zoom");
  function apply() {
    var k = Number(zoom.value);
    document.body.classList.toggle("zoomed", k > 0);
    document.querySelectorAll(".pane img").forEach(function (img) {
      img.style.width = k > 0 ? (img.naturalWidth * k) + "px" : "";
    });
  }
  zoom.addEventListener("change", apply);
  document.querySelectorAll(".row").forEach(function (row) {
    var panes = Array.prototype.slice.call(row.querySelectorAll(".pane"));
    panes.forEach(function (pane) {
      pane.addEventListener("scroll", function () {
        panes.forEach(function (other) {
          if (other !== pane) { other.scrollLeft = pane.scrollLeft; other.scrollTop = pane.scrollTop; }
        });
      });
    });
  });
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ckbd eval: {count} image{plural}</title><style>{style}</style></head>
<body>
<h1>ckbd against JPEG and WebP</h1>
<p class="note">{count} image{plural}: {names}. Rates are measured from the files' bytes; PSNR on RGB.
JPEG and WebP are Pillow's, at the quality whose file comes closest to ckbd's rate on each image.</p>
<h2>Rate-distortion</h2><div class="charts">{charts}</div>
<h2>Results</h2>{models}
<h3>JPEG and WebP (Pillow) over the quality sweep</h3>{sweeps}
<h2>Images</h2>
<div class="controls"><label>view <select id="zoom"><option value="0">fit side by side</option>
<option value="1">actual pixels</option><option value="2">2× enlarged</option><option value="4">4× enlarged</option>
</select></label> <span class="note">enlarged panes scroll together</span></div>
{sections}
<script>{script}</script>
</body></html>
"""
