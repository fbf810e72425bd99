"""Per-stage latency of encode and decode over repeats (``ckbd profile``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError, require
from ckbd.progress import progress
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.memory import peak_resident_bytes, reset_peak
from ckbd.runtime.metrics import psnr
from ckbd.runtime.profiling import (
    DECODE_STAGES,
    ENCODE_STAGES,
    StageTimer,
    median_times,
)
from ckbd.tools.report.machine import machine_info


@dataclass
class ImageProfile:
    file: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    decode_ms: dict[str, float]
    encode_ms: dict[str, float]
    encode_peak_rss: int = 0  # bytes: the process's peak resident set while encoding this image
    decode_peak_rss: int = 0
    substreams: tuple[int, int] = (1, 1)  # of the anchor and the non-anchor pass
    coder_threads: int = 1  # threads that range-coded the larger pass


@dataclass
class ProfileReport:
    backend: str
    arch: str
    N: int
    M: int
    repeat: int
    images: list[ImageProfile] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    precision: str = "fp32"
    device: str = "cpu"  # where the backend ran its stages (--device)
    #: With ``--peak``: the measured peak (:mod:`ckbd.tools.report.peak_probe`) and, per image stage, the
    #: mean GFLOP of its convolutions and the GFLOP/s its mean time gives.
    peak: dict[str, Any] = field(default_factory=dict)
    stage_gflop: dict[str, float] = field(default_factory=dict)
    int8_stages: list[str] = field(default_factory=list)  # image stages that ran an int8 graph
    coder: str = "constriction"  # which range coder ran: "compiled" (releases the GIL) or "constriction"

    def mean(self, which: str) -> dict[str, float]:
        """Per-stage mean over images of the per-image medians."""
        rows = [getattr(img, which) for img in self.images]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["mean_decode_ms"] = self.mean("decode_ms")
        out["mean_encode_ms"] = self.mean("encode_ms")
        return out


def profile_image(encoder: Encoder, decoder: Decoder, image: np.ndarray, name: str, repeat: int,
                  warmup: int = 1) -> ImageProfile:
    """Warm up, then time ``repeat`` encodes and decodes stage by stage; medians per stage."""
    for _ in range(warmup):
        decoder.decode(encoder.encode(image))
    enc_runs, dec_runs = [], []
    data, decoded = b"", image
    peaks = [0, 0]
    for _ in range(repeat):
        timer = StageTimer()
        reset_peak()
        data = encoder.encode_detailed(image, timer, estimate=False).data
        peaks[0] = max(peaks[0], peak_resident_bytes())
        enc_runs.append(timer.times_ms)
        timer = StageTimer()
        reset_peak()
        decoded = decoder.decode_detailed(data, timer).image
        peaks[1] = max(peaks[1], peak_resident_bytes())
        dec_runs.append(timer.times_ms)
    h, w = image.shape[:2]
    profile = ImageProfile(name, w, h, len(data), 8 * len(data) / (h * w), psnr(image, decoded),
                           median_times(dec_runs, DECODE_STAGES), median_times(enc_runs, ENCODE_STAGES), *peaks)
    profile.substreams, profile.coder_threads = coder_split(decoder, data)
    return profile


def coder_split(decoder: Decoder, data: bytes) -> tuple[tuple[int, int], int]:
    """Substreams of each y pass of a stream, and how many threads ``decoder`` codes the larger one on."""
    from ckbd.runtime import bitstream, substreams

    stream = bitstream.unpack(data, max_pixels=decoder.max_pixels)
    header = stream.header
    counts = substreams.counts(stream.anchors, stream.nonanchors, header.y_h, header.substreams)
    return counts, substreams.worker_count(decoder.model.y_coder, decoder.coder_threads, max(counts))


def profile_images(encoder: Encoder, decoder: Decoder, paths: list[Path], repeat: int) -> ProfileReport:
    from ckbd.runtime.imageio import read_image

    m = decoder.manifest
    report = ProfileReport(decoder.model.backend_name, m.arch, m.N, m.M, repeat)
    report.coder = "compiled" if decoder.model.y_coder.releases_gil else "constriction"
    for path in progress(paths, desc="profile", unit="image", enabled=len(paths) > 1):
        report.images.append(profile_image(encoder, decoder, read_image(path), str(path), repeat))
    return report


#: Stages whose convolution work is counted (the parameter stages are small, and integer on one path).
RATE_STAGES = {"analysis": "encode_ms", "latent_synthesis": "decode_ms"}


def add_compute_rates(report: ProfileReport, decoder: Decoder, threads: int) -> None:
    """Count each image stage's GFLOP at every profiled image's padded size, and measure the peak.

    Only for ONNX model directories (the count is read from the fp32 graph file); an int8 graph is
    credited with its float graph's operations.
    """
    from ckbd.runtime.codec import to_network_input
    from ckbd.runtime.stages import stage_shapes
    from ckbd.tools.bench.ops import conv_gflop
    from ckbd.tools.report.peak_probe import measure_peak

    onnx = require("onnx", "calibration", "counting the operations of a graph (--peak)")
    m, model_dir = decoder.manifest, decoder.model.package.root
    if model_dir is None:
        raise CkbdError("--peak counts operations in the ONNX files of a model directory; this model has none")
    for stage in RATE_STAGES:
        graph = onnx.load(str(m.graph_path(model_dir, stage)))
        flops = []
        for image in report.images:
            h, w = to_network_input(np.zeros((image.height, image.width, 3), np.uint8)).shape[2:]
            feeds = {k: np.zeros(v, np.float32) for k, v in stage_shapes(stage, m.N, m.M, h, w).items()}
            flops.append(conv_gflop(graph, feeds))
        report.stage_gflop[stage] = float(np.mean(flops))
    report.peak = measure_peak(threads or 2).to_dict()
    if report.precision == "int8":
        report.int8_stages = [s for s in RATE_STAGES if s in m.variants.get("int8", {})]


def format_rates(report: ProfileReport) -> list[str]:
    """GFLOP/s of each image stage against the measured peak of the precision it ran in."""
    if not report.peak:
        return []
    lines = ["", f"{'stage':<20}{'GFLOP':>8}{'GFLOP/s':>10}{'of peak':>9}   peak ({report.peak['threads']} thread(s))"]
    for stage, which in RATE_STAGES.items():
        int8 = stage in report.int8_stages
        peak = report.peak["int8_gops" if int8 else "fp32_gflops"]
        ms = report.mean(which).get(stage, 0.0)
        gflop = report.stage_gflop.get(stage, 0.0)
        rate = gflop / (ms / 1e3) if ms else 0.0
        lines.append(f"{stage:<20}{gflop:>8.1f}{rate:>10.0f}{100 * rate / peak:>8.0f} %   "
                     f"{peak:.0f} {'u8s8 GOP/s' if int8 else 'fp32 GFLOP/s'}")
    return lines


def format_table(report: ProfileReport) -> str:
    """A table in the spirit of the paper's Table 3: milliseconds per decode/encode stage."""
    dec, enc = report.mean("decode_ms"), report.mean("encode_ms")
    lines = [f"{report.arch} N={report.N} M={report.M} on {report.backend} ({report.device}, {report.precision}), median of {report.repeat}, "
             f"mean over {len(report.images)} image(s)", "", f"{'decode stage':<20}{'ms':>10}"]
    lines += [f"{k:<20}{v:>10.1f}" for k, v in dec.items()]
    lines += ["", f"{'encode stage':<20}{'ms':>10}"]
    lines += [f"{k:<20}{v:>10.1f}" for k, v in enc.items()]
    bpp = np.mean([i.bpp for i in report.images])
    psnr = np.mean([i.psnr for i in report.images])
    lines += ["", f"bpp {bpp:.4f}   PSNR {psnr:.2f} dB", "", f"{'peak RSS (MB)':<20}{'encode':>10}{'decode':>10}"]
    lines += [f"{f'{i.width}x{i.height}':<20}{i.encode_peak_rss / 2**20:>10.0f}{i.decode_peak_rss / 2**20:>10.0f}"
              for i in report.images]
    coder = report.images[0] if report.images else None
    if coder is not None:
        lines += ["", f"range coder: {report.coder}, {coder.coder_threads} thread(s) for "
                      f"{coder.substreams[0]}/{coder.substreams[1]} substreams (anchors/non-anchors, first image)"]
    lines += format_rates(report)
    return "\n".join(lines)
