"""Rate-distortion evaluation: ckbd models (ONNX Runtime) against JPEG and WebP from Pillow.

Every figure is measured, not estimated: bpp is ``8 * len(file bytes) / (H * W)`` of the actual
ckbd bitstream (container and CRCs included) or of the actual JPEG/WebP file, and the quality is
computed on the decoded image with :mod:`ckbd.tools.metrics` (PSNR on RGB, MS-SSIM per RGB channel
averaged). Averages over images are plain means of the per-image values (the usual Kodak
convention: mean PSNR, not PSNR of the mean MSE).

One model is one RD point, and BD-rate needs four per curve, so the comparison is reported two
ways: for every model, the PSNR difference to JPEG/WebP *at the model's bpp* (the Pillow curves
interpolated linearly in bpp), and with four or more models the BD-rate of the ckbd curve against
each Pillow curve.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ckbd.tools.bdrate import MIN_POINTS, bd_rate
from ckbd.tools.metrics import ms_ssim, psnr

DEFAULT_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: Pillow save options: JPEG with its default 4:2:0 chroma subsampling and optimised Huffman
#: tables, WebP lossy with Pillow's default effort (method 4).
PILLOW_FORMATS: dict[str, dict[str, Any]] = {
    "jpeg": {"format": "JPEG", "optimize": True},
    "webp": {"format": "WEBP", "method": 4},
}


@dataclass
class ImageResult:
    file: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float


@dataclass
class RDPoint:
    """One codec setting averaged over all images (plus the per-image values)."""

    label: str
    bpp: float
    psnr: float
    ms_ssim: float
    images: list[ImageResult] = field(default_factory=list)

    @classmethod
    def from_images(cls, label: str, images: list[ImageResult]) -> RDPoint:
        return cls(label, float(np.mean([i.bpp for i in images])), float(np.mean([i.psnr for i in images])),
                   float(np.mean([i.ms_ssim for i in images])), images)


@dataclass
class RDReport:
    images: list[str]
    models: list[RDPoint]
    curves: dict[str, list[RDPoint]]  # "jpeg"/"webp" -> one point per quality (label = quality)
    comparisons: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- measuring ------------------------------------------------------------------------------


def measure(original: np.ndarray, decoded: np.ndarray, n_bytes: int, name: str) -> ImageResult:
    h, w = original.shape[:2]
    return ImageResult(name, w, h, n_bytes, 8.0 * n_bytes / (h * w), psnr(original, decoded),
                       ms_ssim(original, decoded))


def pillow_round_trip(image: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """(file size in bytes, decoded RGB) of ``image`` saved by Pillow as ``fmt`` at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, quality=int(quality), **PILLOW_FORMATS[fmt])
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        return len(data), np.asarray(img.convert("RGB"))


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=not enabled)


def evaluate(paths: Sequence[Path], model_dirs: Sequence[Path | None], qualities: Sequence[int] = DEFAULT_QUALITIES,
             formats: Sequence[str] = tuple(PILLOW_FORMATS), threads: int = 0, progress: bool = True) -> RDReport:
    """Measure every model and every (format, quality) on every image; one progress bar over images.

    ``None`` in ``model_dirs`` stands for the model shipped with ckbd.
    """
    from ckbd.runtime.imageio import read_image

    codecs = [(_model_label(d), *_open(d, threads)) for d in model_dirs]
    per_model: list[list[ImageResult]] = [[] for _ in codecs]
    per_curve: dict[str, dict[int, list[ImageResult]]] = {f: {q: [] for q in qualities} for f in formats}
    with _progress(len(paths), "eval", progress) as bar:
        for path in paths:
            image = read_image(path)
            for results, (_, encoder, decoder) in zip(per_model, codecs):
                data = encoder.encode(image)
                results.append(measure(image, decoder.decode(data), len(data), str(path)))
            for fmt in formats:
                for q in qualities:
                    size, decoded = pillow_round_trip(image, fmt, q)
                    per_curve[fmt][q].append(measure(image, decoded, size, str(path)))
            bar.update(1)
    models = [RDPoint.from_images(label, res) for (label, _, _), res in zip(codecs, per_model)]
    curves = {f: [RDPoint.from_images(str(q), per_curve[f][q]) for q in qualities] for f in formats}
    report = RDReport([str(p) for p in paths], models, curves)
    report.comparisons = compare(models, curves)
    return report


def _open(model_dir: Path | None, threads: int) -> tuple[Any, Any]:
    from ckbd.runtime.codec import Decoder, Encoder

    return Encoder.open(model_dir, threads=threads), Decoder.open(model_dir, threads=threads)


def _model_label(model_dir: Path | None) -> str:
    return "ckbd (default)" if model_dir is None else f"ckbd {Path(model_dir).name}"


# -- comparing ------------------------------------------------------------------------------


def interpolate(curve: Sequence[RDPoint], bpp: float, metric: str = "psnr") -> float | None:
    """``metric`` of a curve at ``bpp``, linear in bpp between measured points; None outside it."""
    pts = sorted((p.bpp, getattr(p, metric)) for p in curve)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs or bpp < xs[0] or bpp > xs[-1]:
        return None
    return float(np.interp(bpp, xs, ys))


def compare(models: Sequence[RDPoint], curves: dict[str, list[RDPoint]]) -> dict[str, Any]:
    """Per model: quality gain over each curve at equal bpp; with >= 4 models: BD-rate (PSNR)."""
    out: dict[str, Any] = {"at_equal_bpp": [], "bd_rate_psnr_pct": {}}
    for model in models:
        row: dict[str, Any] = {"label": model.label, "bpp": model.bpp}
        for fmt, curve in curves.items():
            for metric in ("psnr", "ms_ssim"):
                ref = interpolate(curve, model.bpp, metric)
                row[f"{fmt}_{metric}"] = ref
                row[f"delta_{metric}_vs_{fmt}"] = None if ref is None else getattr(model, metric) - ref
        out["at_equal_bpp"].append(row)
    if len(models) >= MIN_POINTS:
        for fmt, curve in curves.items():
            try:
                out["bd_rate_psnr_pct"][fmt] = bd_rate([p.bpp for p in curve], [p.psnr for p in curve],
                                                       [m.bpp for m in models], [m.psnr for m in models])
            except ValueError as exc:  # e.g. the curves do not overlap in PSNR
                out["bd_rate_psnr_pct"][fmt] = None
                out.setdefault("notes", []).append(f"BD-rate vs {fmt}: {exc}")
    else:
        out["notes"] = [f"BD-rate needs >= {MIN_POINTS} ckbd models (RD points); got {len(models)}: "
                        "see the PSNR at equal bpp instead"]
    return out


# -- reporting ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return format(value, ("+" if signed else "") + spec)


def format_table(report: RDReport) -> str:
    """Plain-text summary: every model and curve point, then the comparisons."""
    lines = [f"{len(report.images)} image(s)", "", f"{'codec':<28}{'bpp':>8}{'PSNR':>9}{'MS-SSIM':>10}"]
    for model in report.models:
        lines.append(f"{model.label:<28}{model.bpp:>8.4f}{model.psnr:>9.2f}{model.ms_ssim:>10.4f}")
    for fmt, curve in report.curves.items():
        for p in curve:
            lines.append(f"{fmt + ' q' + p.label:<28}{p.bpp:>8.4f}{p.psnr:>9.2f}{p.ms_ssim:>10.4f}")
    lines += ["", "ckbd vs Pillow at equal bpp (interpolated):"]
    for row in report.comparisons.get("at_equal_bpp", []):
        deltas = {fmt: row.get(f"delta_psnr_vs_{fmt}") for fmt in report.curves}
        parts = [f"{fmt}: " + ("n/a (bpp outside the curve)" if d is None else f"{d:+.2f} dB") for fmt, d in deltas.items()]
        lines.append(f"  {row['label']} @ {row['bpp']:.4f} bpp: " + ", ".join(parts))
    bd = report.comparisons.get("bd_rate_psnr_pct") or {}
    for fmt, value in bd.items():
        lines.append(f"BD-rate (PSNR) vs {fmt}: {_fmt(value, '.2f', True)} %")
    lines += [f"note: {n}" for n in report.comparisons.get("notes", [])]
    return "\n".join(lines)


def rd_plot_curves(report: RDReport, metric: str = "psnr") -> dict[str, list[tuple[float, float]]]:
    """{label: [(bpp, metric)]} for :func:`ckbd.tools.plots.rd_curves`; ckbd models form one curve."""
    names = {"jpeg": "JPEG (Pillow)", "webp": "WebP (Pillow)"}
    curves = {names.get(fmt, fmt): [(p.bpp, getattr(p, metric)) for p in pts] for fmt, pts in report.curves.items()}
    if report.models:
        curves["ckbd"] = [(m.bpp, getattr(m, metric)) for m in report.models]
    return curves

