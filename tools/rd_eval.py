"""Rate-distortion evaluation: ckbd models (ONNX Runtime, or checkpoints on torch) against JPEG and WebP.

Every figure is measured, not estimated: bpp is ``8 * len(file bytes) / (H * W)`` of the actual
ckbd bitstream (container and CRCs included) or of the actual JPEG/WebP file, and the quality is
computed on the decoded image with :mod:`ckbd.runtime.metrics` (PSNR on RGB, MS-SSIM per RGB channel
averaged). Averages over images are plain means of the per-image values (the usual Kodak
convention: mean PSNR, not PSNR of the mean MSE).

One model is one RD point, and BD-rate needs four per curve, so the comparison is reported two
ways: for every model, the PSNR difference to JPEG/WebP *at the model's bpp* (the Pillow curves
interpolated linearly in bpp), and with four or more models the BD-rate of the ckbd curve against
each Pillow curve.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ckbd.errors import require
from ckbd.runtime.metrics import ms_ssim, psnr
from ckbd.runtime.rate import bits_per_pixel
from ckbd.tools.report.bdrate import MIN_POINTS, bd_rate

#: Plot labels of the Pillow curves (drawn as references: see :func:`ckbd.tools.report.plots.rd_curves`).
PILLOW_LABELS = {"jpeg": "JPEG (Pillow)", "webp": "WebP (Pillow)"}
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
    family: str = ""  # the architecture: BD-rate curves join only points of one family

    @classmethod
    def from_images(cls, label: str, images: list[ImageResult], family: str = "") -> RDPoint:
        return cls(label, float(np.mean([i.bpp for i in images])), float(np.mean([i.psnr for i in images])),
                   float(np.mean([i.ms_ssim for i in images])), images, family)


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
    return ImageResult(name, w, h, n_bytes, bits_per_pixel(n_bytes, h, w), psnr(original, decoded),
                       ms_ssim(original, decoded))


def pillow_round_trip(image: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """(file size in bytes, decoded RGB) of ``image`` saved by Pillow as ``fmt`` at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, quality=int(quality), **PILLOW_FORMATS[fmt])
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        return len(data), np.asarray(img.convert("RGB"))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from ckbd.progress import progress

    return progress(total=total, desc=desc, unit="image", enabled=enabled)


#: Sees each image once measured: (its path, the original, per model its result and decoded image).
ImageHook = Callable[[Path, np.ndarray, list[tuple[ImageResult, np.ndarray]]], None]


def evaluate(paths: Sequence[Path], models: Sequence[Path | None], qualities: Sequence[int] = DEFAULT_QUALITIES,
             formats: Sequence[str] = tuple(PILLOW_FORMATS), threads: int = 0, progress: bool = True,
             on_image: ImageHook | None = None) -> RDReport:
    """Measure every model and every (format, quality) on every image; one progress bar over images.

    ``models`` are exported model directories or checkpoint files; ``None`` is the shipped model.
    ``on_image`` gets the decoded images, which are not kept (e.g. the ``--html`` page's views).
    """
    from ckbd.runtime.imageio import read_image

    codecs = [_open(m, threads) for m in models]
    per_model: list[list[ImageResult]] = [[] for _ in codecs]
    per_curve: dict[str, dict[int, list[ImageResult]]] = {f: {q: [] for q in qualities} for f in formats}
    with _progress(len(paths), "eval", progress) as bar:
        for path in paths:
            image = read_image(path)
            shown = []
            for results, (_, _, encoder, decoder) in zip(per_model, codecs):
                data = encoder.encode(image)
                decoded = decoder.decode(data)
                results.append(measure(image, decoded, len(data), str(path)))
                shown.append((results[-1], decoded))
            if on_image is not None:
                on_image(path, image, shown)
            for fmt in formats:
                for q in qualities:
                    size, decoded = pillow_round_trip(image, fmt, q)
                    per_curve[fmt][q].append(measure(image, decoded, size, str(path)))
            bar.update(1)
    points = [RDPoint.from_images(label, res, family) for (label, family, _, _), res in zip(codecs, per_model)]
    curves = {f: [RDPoint.from_images(str(q), per_curve[f][q]) for q in qualities] for f in formats}
    report = RDReport([str(p) for p in paths], points, curves)
    report.comparisons = compare(points, curves)
    return report


def _open(model: Path | None, threads: int) -> tuple[str, str, Any, Any]:
    """(label, architecture, encoder, decoder): an exported model directory runs on ONNX Runtime; a checkpoint
    file runs on torch, through the baselines' reference codecs for ``mbt2018``/``mbt2018-mean``
    (they have no exported graphs), so the checkerboard's RD cost can be measured against them."""
    from ckbd.runtime.codec import Decoder, Encoder

    if model is not None and Path(model).is_file():
        return _open_checkpoint(Path(model), threads)
    label = "ckbd (default)" if model is None else f"ckbd {Path(model).name}"
    encoder = Encoder.open(model, threads=threads)
    return label, encoder.manifest.arch, encoder, Decoder.open(model, threads=threads)


def _open_checkpoint(path: Path, threads: int) -> tuple[str, str, Any, Any]:
    torch = require("torch", "export", "Evaluating a checkpoint")
    from ckbd.baselines import CODECS, baseline_codec
    from ckbd.export.torch_backend import open_reference
    from ckbd.models.checkpoint import load_model
    from ckbd.runtime.codec import Decoder, Encoder

    if threads:
        torch.set_num_threads(threads)
    model = load_model(path)
    arch = model.config.arch
    label = f"{arch} {path.name} (torch)"
    if arch in CODECS:
        codec = baseline_codec(model)
        return label, arch, codec, codec
    return label, arch, open_reference(Encoder, model), open_reference(Decoder, model)


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
    families: dict[str, list[RDPoint]] = {}
    for model in models:
        families.setdefault(model.family, []).append(model)
    for family, points in families.items():
        if len(points) < MIN_POINTS:
            out.setdefault("notes", []).append(
                f"BD-rate needs >= {MIN_POINTS} RD points of one architecture; {family or 'models'} has "
                f"{len(points)}: see the PSNR at equal bpp instead")
            continue
        out["bd_rate_psnr_pct"][family] = {fmt: _bd_rate(curve, points, out) for fmt, curve in curves.items()}
    fitted = {f: pts for f, pts in families.items() if len(pts) >= MIN_POINTS}
    between = {f"{test} vs {ref}": _bd_rate(fitted[ref], fitted[test], out)
               for test in fitted for ref in fitted if test != ref}
    if between:  # e.g. the checkerboard's rate cost over the serial context at equal PSNR
        out["bd_rate_between_families_pct"] = between
    return out


def _bd_rate(reference: Sequence[RDPoint], points: Sequence[RDPoint], out: dict[str, Any]) -> float | None:
    try:
        return bd_rate([p.bpp for p in reference], [p.psnr for p in reference],
                       [m.bpp for m in points], [m.psnr for m in points])
    except ValueError as exc:  # e.g. the curves do not overlap in PSNR
        out.setdefault("notes", []).append(f"BD-rate of {points[0].family or 'models'}: {exc}")
        return None


def family_bd_rate_lines(comparisons: dict[str, Any], skip_missing: bool = False) -> list[str]:
    """One line per BD-rate, against the Pillow curves and between architectures."""
    values = [(f"{family or 'the models'} vs {fmt}", value)
              for family, per_format in (comparisons.get("bd_rate_psnr_pct") or {}).items()
              for fmt, value in per_format.items()]
    values += list((comparisons.get("bd_rate_between_families_pct") or {}).items())
    return [f"BD-rate (PSNR) of {what}: {_fmt(value, '.2f', True)} %" for what, value in values
            if value is not None or not skip_missing]


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
    lines += family_bd_rate_lines(report.comparisons)
    lines += [f"note: {n}" for n in report.comparisons.get("notes", [])]
    return "\n".join(lines)


def rd_plot_curves(report: RDReport, metric: str = "psnr", join: bool = True) -> dict[str, list[tuple[float, float]]]:
    """{label: [(bpp, metric)]} for :func:`ckbd.tools.report.plots.rd_curves`.

    ``join``: the models of one architecture form one curve (a λ sweep); otherwise each model is its
    own labelled series, since two unrelated models joined by a line would suggest a curve that is not one.
    """
    curves = {PILLOW_LABELS.get(fmt, fmt): [(p.bpp, getattr(p, metric)) for p in pts] for fmt, pts in report.curves.items()}
    for m in report.models:
        label = (m.family or "ckbd") if join else _unique(m.label, curves)
        curves.setdefault(label, []).append((m.bpp, getattr(m, metric)))
    return curves


def _unique(label: str, taken: dict[str, Any]) -> str:
    """``label``, or ``label (2)``, ``label (3)``... when models share a name (e.g. two ``model`` folders)."""
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = f"{label} ({n})"
    return candidate


def plot_rd(report: RDReport, path: Path, join: bool = True) -> None:
    """The RD plot: one curve per architecture (or per model), the Pillow sweeps as dashed references."""
    from ckbd.tools.report.plots import rd_curves

    rd_curves(rd_plot_curves(report, join=join), path, references=tuple(PILLOW_LABELS.values()))
