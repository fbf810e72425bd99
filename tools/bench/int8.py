"""INT8 against FP32 on a set of images (Kodak by default), with ONNX Runtime on this machine's CPU.

The library behind ``ckbd bench int8 MODEL_DIR [--images DIR] [--count N] [--json FILE] [--markdown FILE]``
(:mod:`ckbd.cli.bench.int8`).

Each image is encoded once with the fp32 encoder; the *same bytes* are then decoded by an fp32 and
an int8 decoder (``precision="int8"``, i.e. the calibrated ``latent_synthesis`` variant). So:

* **bpp is unchanged by construction**: only synthesis is quantised, and it runs after every
  symbol has been decoded. The report does not take this on trust: it checks that both decoders
  recover identical symbols and latent halves for every image.
* **PSNR** is measured against the original image for both decodes, plus int8 against fp32.
* **Decode time** is the median over repeats of the whole decode (wall clock) and of the
  ``latent_synthesis`` stage alone, after one warm-up decode per image and precision; fp32 and int8
  runs alternate so that load from other processes hits both alike.

When the model also has an int8 ``analysis`` variant, an int8 encoder is run too and its bpp and
PSNR (decoded with int8 synthesis) are reported: quantising analysis *does* change the stream.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError
from ckbd.runtime.metrics import psnr
from ckbd.runtime.stages import ANALYSIS, LATENT_SYNTHESIS

INT8 = "int8"


@dataclass
class ImageResult:
    """One image: rate, quality of both decodes, and decode timings (median ms)."""

    file: str
    width: int
    height: int
    bpp: float
    psnr_fp32: float
    psnr_int8: float
    psnr_int8_vs_fp32: float
    latents_identical: bool
    decode_ms_fp32: float
    decode_ms_int8: float
    synthesis_ms_fp32: float
    synthesis_ms_int8: float
    int8_encoder_bpp: float | None = None
    int8_encoder_psnr: float | None = None


@dataclass
class Int8Report:
    model_dir: str
    threads: int
    repeats: int
    calibration: dict[str, Any]
    images: list[ImageResult] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Means over images (PSNR in dB averaged per image, as is usual for Kodak)."""
        rows = self.images

        def mean(name: str) -> float:
            return float(np.mean([getattr(r, name) for r in rows]))

        out: dict[str, Any] = {
            "images": len(rows),
            "bpp_fp32": mean("bpp"),
            "bpp_int8": mean("bpp"),
            "bpp_change": 0.0,
            "latents_identical_all": all(r.latents_identical for r in rows),
            "psnr_fp32": mean("psnr_fp32"),
            "psnr_int8": mean("psnr_int8"),
            "psnr_change_db": mean("psnr_int8") - mean("psnr_fp32"),
            "psnr_int8_vs_fp32": mean("psnr_int8_vs_fp32"),
            "decode_ms_fp32": mean("decode_ms_fp32"),
            "decode_ms_int8": mean("decode_ms_int8"),
            "synthesis_ms_fp32": mean("synthesis_ms_fp32"),
            "synthesis_ms_int8": mean("synthesis_ms_int8"),
        }
        out["decode_time_change_pct"] = 100 * (out["decode_ms_int8"] / out["decode_ms_fp32"] - 1)
        out["synthesis_time_change_pct"] = 100 * (out["synthesis_ms_int8"] / out["synthesis_ms_fp32"] - 1)
        if rows and all(r.int8_encoder_bpp is not None for r in rows):
            out["int8_encoder_bpp"] = mean("int8_encoder_bpp")
            out["int8_encoder_bpp_change_pct"] = 100 * (out["int8_encoder_bpp"] / out["bpp_fp32"] - 1)
            out["int8_encoder_psnr"] = mean("int8_encoder_psnr")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _timed_decode(decoder: Any, data: bytes) -> tuple[Any, float, float]:
    """One decode: result, wall ms, latent_synthesis ms."""
    from ckbd.runtime.profiling import StageTimer

    timer = StageTimer()
    start = time.perf_counter()
    result = decoder.decode_detailed(data, timer)
    wall = (time.perf_counter() - start) * 1e3
    return result, wall, timer.times_ms.get(LATENT_SYNTHESIS, 0.0)


def _compare_decodes(fp32: Any, int8: Any, data: bytes, repeats: int) -> tuple[Any, Any, list[float], list[float], list[float], list[float]]:
    """Warm up both decoders on ``data``, then alternate timed decodes ``repeats`` times."""
    ref, _, _ = _timed_decode(fp32, data)
    low, _, _ = _timed_decode(int8, data)
    walls: tuple[list[float], list[float]] = ([], [])
    synths: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        order = ((0, fp32), (1, int8)) if i % 2 == 0 else ((1, int8), (0, fp32))
        for slot, decoder in order:
            _, wall, synth = _timed_decode(decoder, data)
            walls[slot].append(wall)
            synths[slot].append(synth)
    return ref, low, walls[0], walls[1], synths[0], synths[1]


def evaluate_image(path: Path, codecs: dict[str, Any], repeats: int) -> ImageResult:
    from ckbd.runtime.imageio import read_image

    image = read_image(path, quiet=True)
    height, width = image.shape[:2]
    data = codecs["encoder"].encode(image)
    ref, low, wall32, wall8, syn32, syn8 = _compare_decodes(codecs["fp32"], codecs["int8"], data, repeats)
    row = ImageResult(
        file=path.name, width=width, height=height, bpp=8 * len(data) / (height * width),
        psnr_fp32=psnr(image, ref.image), psnr_int8=psnr(image, low.image),
        psnr_int8_vs_fp32=psnr(ref.image, low.image), latents_identical=ref.latents.equals(low.latents),
        decode_ms_fp32=statistics.median(wall32), decode_ms_int8=statistics.median(wall8),
        synthesis_ms_fp32=statistics.median(syn32), synthesis_ms_int8=statistics.median(syn8),
    )
    if "int8_encoder" in codecs:
        data8 = codecs["int8_encoder"].encode(image)
        row.int8_encoder_bpp = 8 * len(data8) / (height * width)
        row.int8_encoder_psnr = psnr(image, codecs["int8"].decode(data8))
    return row


def open_codecs(model_dir: Path, threads: int) -> dict[str, Any]:
    """fp32 encoder, fp32 and int8 decoders (and an int8 encoder when analysis was calibrated)."""
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.manifest import Manifest

    variants = Manifest.load(model_dir).variants.get(INT8, {})
    if LATENT_SYNTHESIS not in variants:
        raise CkbdError(f"{model_dir} has no int8 latent_synthesis graph; run: ckbd calibrate {model_dir} --images DIR")
    codecs: dict[str, Any] = {
        "encoder": Encoder.open(model_dir, threads=threads),
        "fp32": Decoder.open(model_dir, threads=threads),
        "int8": Decoder.open(model_dir, threads=threads, precision=INT8),
    }
    if ANALYSIS in variants:
        codecs["int8_encoder"] = Encoder.open(model_dir, threads=threads, precision=INT8)
    return codecs


def run_report(model_dir: Path, images: list[Path], threads: int = 1, repeats: int = 3,
               progress: bool = True) -> Int8Report:
    """Measure every image; see the module docstring for what is compared and how."""
    from ckbd.progress import progress as progress_bar
    from ckbd.runtime.manifest import Manifest
    from ckbd.tools.report.machine import machine_info

    if not images:
        raise CkbdError("no images to evaluate")
    model_dir = Path(model_dir)
    codecs = open_codecs(model_dir, threads)
    calibration = Manifest.load(model_dir).extra.get("calibration", {})
    machine = {**machine_info(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    report = Int8Report(str(model_dir), threads, repeats, calibration, machine=machine)
    for path in progress_bar(images, desc="int8 vs fp32", unit="img", enabled=progress):
        report.images.append(evaluate_image(path, codecs, repeats))
    return report


def format_report(report: Int8Report) -> str:
    """Per-image table and the summary, as printed by the command."""
    return "\n".join([*_table(report), "", *_summary_lines(report)])


def _table(report: Int8Report) -> list[str]:
    header = (f"{'image':<14}{'bpp':>8}{'PSNR fp32':>11}{'PSNR int8':>11}{'int8/fp32':>11}"
              f"{'dec fp32':>10}{'dec int8':>10}{'syn fp32':>10}{'syn int8':>10}  latents")
    rows = [header]
    for r in report.images:
        rows.append(
            f"{r.file:<14}{r.bpp:>8.4f}{r.psnr_fp32:>11.3f}{r.psnr_int8:>11.3f}{r.psnr_int8_vs_fp32:>11.2f}"
            f"{r.decode_ms_fp32:>10.1f}{r.decode_ms_int8:>10.1f}{r.synthesis_ms_fp32:>10.1f}"
            f"{r.synthesis_ms_int8:>10.1f}  {'same' if r.latents_identical else 'DIFFER'}"
        )
    return rows


def _summary_lines(report: Int8Report) -> list[str]:
    s = report.summary()
    same = "all" if s["latents_identical_all"] else "NOT all"
    lines = [
        f"images: {s['images']}, ONNX Runtime CPU, {report.threads} thread(s), median of {report.repeats} decodes",
        (f"bpp:    {s['bpp_fp32']:.4f} fp32, {s['bpp_int8']:.4f} int8 (the same bitstream: only synthesis "
         f"is quantised; latents identical on {same} images)"),
        (f"PSNR:   {s['psnr_fp32']:.3f} dB fp32, {s['psnr_int8']:.3f} dB int8 ({s['psnr_change_db']:+.3f} dB); "
         f"int8 vs fp32 reconstruction {s['psnr_int8_vs_fp32']:.2f} dB"),
        (f"decode: {s['decode_ms_fp32']:.1f} ms fp32, {s['decode_ms_int8']:.1f} ms int8 "
         f"({s['decode_time_change_pct']:+.1f} %)"),
        (f"synthesis stage: {s['synthesis_ms_fp32']:.1f} ms fp32, {s['synthesis_ms_int8']:.1f} ms int8 "
         f"({s['synthesis_time_change_pct']:+.1f} %)"),
    ]
    if "int8_encoder_bpp" in s:
        lines.append(f"int8 analysis too: {s['int8_encoder_bpp']:.4f} bpp ({s['int8_encoder_bpp_change_pct']:+.2f} %), "
                     f"PSNR {s['int8_encoder_psnr']:.3f} dB")
    settings = report.calibration.get(LATENT_SYNTHESIS)
    if settings:
        lines.append(f"calibration: {json.dumps(settings, sort_keys=True)}")
    return lines


SECTION_BEGIN = "<!-- int8: begin -->"
SECTION_END = "<!-- int8: end -->"


def render_markdown(reports: list[Int8Report], command: str) -> str:
    """The RESULTS.md section: one summary row per model directory, with how it was calibrated."""
    lines = [SECTION_BEGIN, "", "### INT8 vs FP32 on ONNX Runtime CPU (`ckbd bench int8`)", "",
             f"Command: `{command}`", "",
             "| model | target | images | threads | PSNR fp32 | PSNR int8 | change | synthesis fp32 | "
             "synthesis int8 | speed-up | decode change |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for report in reports:
        s = report.summary()
        target = report.calibration.get(LATENT_SYNTHESIS, {}).get("target", "tensorrt")
        speedup = s["synthesis_ms_fp32"] / s["synthesis_ms_int8"] if s["synthesis_ms_int8"] else float("nan")
        lines.append(
            f"| {Path(report.model_dir).name} | {target} | {s['images']} | {report.threads} | {s['psnr_fp32']:.3f} | "
            f"{s['psnr_int8']:.3f} | {s['psnr_change_db']:+.3f} dB | {s['synthesis_ms_fp32']:.1f} ms | "
            f"{s['synthesis_ms_int8']:.1f} ms | {speedup:.2f}x | {s['decode_time_change_pct']:+.1f} % |")
    lines.append("")
    for report in reports:
        settings = report.calibration.get(LATENT_SYNTHESIS)
        if settings:
            lines.append(f"- {Path(report.model_dir).name}: `{json.dumps(settings, sort_keys=True)}`")
    machine = reports[0].machine if reports else {}
    lines += ["", f"Machine: {machine.get('processor', '?')}, {machine.get('cpu_count', '?')} CPUs "
              f"(load average at the start: {machine.get('load_average', '?')}).", "", SECTION_END]
    return "\n".join(lines) + "\n"
