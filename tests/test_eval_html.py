"""``ckbd eval --html``: the page, its images, the rate matching, and a real headless browser
(Debian's chromium, where installed) loading it without errors (shipped model, tests/data only)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ckbd.cli.main import app
from ckbd.errors import UsageError
from ckbd.runtime.imageio import read_image
from ckbd.runtime.rate import bits_per_pixel
from ckbd.tools.eval_html import matched_quality
from ckbd.tools.rd_eval import pillow_round_trip
from ckbd.tools.svg_chart import nice_ticks, rd_svg

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("kodim*.png"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
runner = CliRunner()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "page"
    args = ["eval", *map(str, IMAGES), "--html", str(folder), "--qualities", "10,50,90", "--threads", "1", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {folder / 'index.html'}" in result.output
    return folder


def test_page_shows_every_image_beside_jpeg_and_webp(page: Path) -> None:
    html = (page / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', html)
    assert len(sources) == 4 * len(IMAGES) == html.count("<img ")
    for src, width, height in sources:
        with Image.open(page / src) as img:  # every image is a local PNG of the stated size
            assert (img.format, img.size) == ("PNG", (int(width), int(height)))
    for image in IMAGES:
        row = [s for s, _, _ in sources if image.stem in s]
        assert [Path(s).name for s in row] == ["original.png", "ckbd.png", "jpeg.png", "webp.png"]
        assert np.array_equal(np.asarray(Image.open(page / row[0])), read_image(image))
    captions = re.findall(r"<figcaption[^>]*><b>([^<]+)</b><br>([^<]*)</figcaption>", html)
    labels = [label for label, _ in captions]
    assert labels.count("original") == labels.count("ckbd") == len(IMAGES)
    assert all(re.fullmatch(r"\d\.\d{3} bpp · \d+\.\d\d dB", figures) for label, figures in captions
               if label != "original")
    assert html.count("<svg") == 2 and "ckbd (default)" in html and "at equal bpp" in html


def test_page_needs_no_network(page: Path) -> None:
    html = (page / "index.html").read_text()
    assert not re.search(r"(?:https?:)?//", html.replace("://", "").replace("<!--", "")), "an external reference"
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all((page / ref).is_file() for ref in refs)
    assert "<link" not in html and "@import" not in html and "url(" not in html.replace("url(#clip-", "")


def test_matched_bpp_is_the_closest(page: Path) -> None:
    """JPEG and WebP are shown at the quality whose rate is closest to ckbd's on that image: closer
    than any quality of the sweep, and no worse than the neighbouring qualities."""
    html = (page / "index.html").read_text()
    image = read_image(IMAGES[0])
    target = float(re.search(r"<b>ckbd</b><br>([\d.]+) bpp", html).group(1))  # first image's row
    h, w = image.shape[:2]
    for fmt in ("jpeg", "webp"):
        quality, size, decoded = matched_quality(image, fmt, target)
        assert f"{'JPEG' if fmt == 'jpeg' else 'WebP'} q{quality}</b><br>{bits_per_pixel(size, h, w):.3f} bpp" in html

        def gap(q: int, fmt: str = fmt) -> float:
            return abs(bits_per_pixel(pillow_round_trip(image, fmt, q)[0], h, w) - target)

        best = abs(bits_per_pixel(size, h, w) - target)
        assert all(best <= gap(q) for q in (10, 50, 90, max(quality - 1, 1), min(quality + 1, 100)))
        assert decoded.shape == image.shape


def test_html_option_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    result = runner.invoke(app, ["eval", str(IMAGES[0]), "--html", str(tmp_path / "taken")])
    assert isinstance(result.exception, UsageError) and "is a file" in str(result.exception)
    result = runner.invoke(app, ["eval", str(IMAGES[0]), "--html", str(tmp_path / "no" / "page")])
    assert isinstance(result.exception, UsageError) and "does not exist" in str(result.exception)


def test_several_models_get_a_named_row_each() -> None:
    from ckbd.tools.eval_html import Comparison, View, render
    from ckbd.tools.rd_eval import ImageResult, RDPoint, RDReport

    def result(bpp: float) -> ImageResult:
        return ImageResult("a.png", 4, 2, 1, bpp, 30.0, 0.9)

    models = [RDPoint("ckbd lambda-1", 0.3, 30.0, 0.9), RDPoint("ckbd lambda-2", 0.6, 33.0, 0.95)]
    report = RDReport(["a.png"], models, {"jpeg": [RDPoint("50", 1.0, 31.0, 0.9)]})
    rows = [[View("original", "o.png"), View("ckbd", f"c{k}.png", result(m.bpp)), View("JPEG q7", f"j{k}.png",
                                                                                          result(m.bpp))]
            for k, m in enumerate(models)]
    html = render(report, [Comparison("a.png", 4, 2, rows)])
    assert re.findall(r'<p class="model">([^<]+)</p>', html) == ["ckbd lambda-1", "ckbd lambda-2"]
    assert html.count('<div class="row">') == 2
    single = render(RDReport(["a.png"], models[:1], report.curves), [Comparison("a.png", 4, 2, rows[:1])])
    assert '<p class="model">' not in single


def test_chart_ticks_and_points() -> None:
    assert nice_ticks(0.0, 1.39) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert nice_ticks(25.7, 34.9) == [26.0, 28.0, 30.0, 32.0, 34.0]
    curves = {"JPEG": [(0.5, 30.0), (1.0, 33.0)], "ckbd": [(0.7, 32.0), (0.9, math.inf)]}
    svg = rd_svg(curves, "c1", references=("JPEG",))
    assert svg.count("<circle") == 3 and "stroke-dasharray" in svg and 'id="clip-c1"' in svg
    assert "no finite points" in rd_svg({"ckbd": [(1.0, math.inf)]}, "c2")


# -- a real browser -------------------------------------------------------------------------

#: Injected first in <head>: records script errors, failed resource loads and console errors/warnings,
#: and after the load event writes them, every image's natural size and the image widths once the
#: page's zoom control is set to 2x into the DOM, where ``--dump-dom`` shows them.
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", function (e) {
  window.__problems.push(e.message || ("failed to load " + (e.target.src || e.target.href)));
}, true);
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__problems.push(level + ": " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
});
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(
    document.images, function (img) { return [img.getAttribute("src"), img.naturalWidth, img.naturalHeight]; });
  var zoom = document.getElementById("zoom"), zoomed = null;
  if (zoom) {  // the page's view control: 2x enlarged sets every image to twice its natural width
    zoom.value = "2";
    zoom.dispatchEvent(new Event("change"));
    zoomed = Array.prototype.map.call(document.images, function (img) { return img.getBoundingClientRect().width; });
  }
  var report = document.createElement("pre");
  report.id = "probe";
  report.textContent = JSON.stringify({problems: window.__problems, images: images, zoomed: zoomed});
  document.body.appendChild(report);
});
</script>"""


def _browse(html_file: Path, profile: Path) -> dict:
    """Load ``html_file`` in headless chromium with the probe; its report."""
    probed = html_file.with_name("probed-" + html_file.name)
    probed.write_text(html_file.read_text().replace("<head>", "<head>" + PROBE, 1))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                             probed.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no probe report in chromium's DOM:\n{result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_loads_the_page_without_errors(page: Path, tmp_path: Path) -> None:
    report = _browse(page / "index.html", tmp_path / "profile")
    assert report["problems"] == []
    assert len(report["images"]) == 4 * len(IMAGES)
    assert all(width > 0 and height > 0 for _, width, height in report["images"]), report["images"]
    assert report["zoomed"] == [2 * width for _, width, _ in report["images"]]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_probe_sees_broken_pages(tmp_path: Path) -> None:
    """The check above can fail: a missing image and a script error are both reported."""
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img src="missing.png" alt="">'
                      "<script>undefinedFunction();</script></body></html>")
    report = _browse(broken, tmp_path / "profile")
    assert report["images"] == [["missing.png", 0, 0]]
    problems = " | ".join(report["problems"])
    assert "missing.png" in problems and "undefinedFunction" in problems
