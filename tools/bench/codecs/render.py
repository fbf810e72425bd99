"""The benchmark report as a markdown page (docs/RESULTS.md) and as plots.

``rds`` are ``ckbd eval --json`` results (parsed JSON, keyed by a section name), added as
rate-distortion sections and one RD plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ckbd.errors import CkbdError
from ckbd.tools.bench.codecs.report import BenchReport, CodecResult, read_json
from ckbd.tools.bench.codecs.timing import time_vs_compressai

RD_WHAT = "a `ckbd eval --json` result"


def read_rd(path: Path) -> dict[str, Any]:
    """A ``ckbd eval --json`` result."""
    data = read_json(path, RD_WHAT)
    missing = {"models", "curves"} - set(data) if isinstance(data, dict) else {"models", "curves"}
    if missing:
        raise CkbdError(f"{path} is not {RD_WHAT} (missing {', '.join(sorted(missing))})")
    return data  # type: ignore[no-any-return]


def _ms(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:,.1f}"


def _stage_table(codecs: dict[str, CodecResult], which: str) -> list[str]:
    """Rows = stages (in first-seen order), columns = codecs; blank where a codec has no such stage."""
    means = {n: c.mean(f"{which}_ms") for n, c in codecs.items()}
    stages = list(dict.fromkeys(s for c in codecs.values() for s in getattr(c, f"{which}_stages")))
    lines = ["| stage (ms) | " + " | ".join(c.label for c in codecs.values()) + " |",
             "|---|" + "---:|" * len(codecs)]
    for stage in stages + ["total"]:
        cells = [_ms(means[n].get(stage)) for n in codecs]
        label = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {label} | " + " | ".join(f"**{c}**" if stage == "total" and c else c for c in cells) + " |")
    return lines


def format_markdown(report: BenchReport, rds: dict[str, dict[str, Any]] | None = None) -> str:
    cfg, mach = report.config, report.machine
    ours, theirs = report.group("ckbd"), report.group("compressai")
    lines = ["# Benchmark results", "",
             "Written by `ckbd bench codecs`; do not edit by hand.", "",
             f"- architecture: N={cfg.N}, M={cfg.M} for every codec"
             + (" (randomly initialised weights)" if cfg.random_weights else ""),
             f"- images: {len(cfg.images)} ({', '.join(Path(p).name for p in cfg.images[:6])}"
             + (", ..." if len(cfg.images) > 6 else "") + f"); size {_sizes(report)}",
             f"- threads: {cfg.threads} (torch and ONNX Runtime intra-op); timed runs per image: {cfg.repeat}",
             f"- machine: {mach.processor}, {mach.cpu_count} CPUs, {mach.platform}; "
             f"Python {mach.python}, torch {mach.torch}, onnxruntime {mach.onnxruntime}",
             f"- load average at start / end: {mach.loadavg_start} / {mach.loadavg_end}", "",
             "## Decoding latency per stage", "", *_stage_table(ours, "decode"), "",
             "## Encoding latency per stage", "", *_stage_table(ours, "encode"), ""]
    serial = report.codecs.get("mbt2018-torch")
    breakdown = serial.mean("breakdown_ms") if serial else {}
    if breakdown:
        lines += [f"Inside the serial `context_decode`: networks (crop, context conv, entropy parameters, "
                  f"indexes) {_ms(breakdown.get('serial_params'))} ms, range decoding "
                  f"{_ms(breakdown.get('serial_coding'))} ms.", ""]
    lines += ["## Serial vs parallel context", ""]
    lines += [f"- {k.replace('_', ' ')}: **{v:.1f}x**" for k, v in report.ratios.items()] or ["- (not measured)"]
    lines += ["", "\"decode\" compares whole decodes; \"context stages\" compares the serial `context_decode` with "
              "the checkerboard's parameter and entropy-decoding stages (anchor_params .. nonanchor_decode), "
              "the part the context schedule changes. The paper reports > 40x on a GPU.", "",
              "## CompressAI, same weights", ""]
    if theirs:
        lines += ["| codec | encode (ms) | decode (ms) |", "|---|---:|---:|"]
        lines += [f"| {c.label} | {_ms(c.mean('encode_ms').get('total'))} | {_ms(c.mean('decode_ms').get('total'))} |"
                  for c in theirs.values()]
        lines.append("")
    versus = time_vs_compressai(report.codecs)
    if versus:
        figures = ", ".join(f"{kind} **{value:.2f}**" for kind, value in versus.items())
        lines += [f"ckbd (ONNX Runtime) time over CompressAI's checkerboard time, same weights: {figures} "
                  "(lower is faster)", ""]
    lines += [n for n in report.notes if n.startswith("CompressAI")] + [""]
    if report.agreement_psnr_db:
        lines += ["Reconstructions of the first image by implementations sharing weights (PSNR between them, dB):", ""]
        lines += [f"- {k}: {v}" for k, v in report.agreement_psnr_db.items()] + [""]
    coder = report.coder
    if coder:
        lines += ["## Entropy coder (one core, synthetic Gaussian latents)", "",
                  f"- {coder.n_symbols:,} symbols: encode {coder.encode_msym_s:.1f} M symbols/s, "
                  f"decode {coder.decode_msym_s:.1f} M symbols/s, rate overhead {coder.overhead_pct:.3f} %", ""]
    if rds:
        lines += ["## Rate-distortion (from `ckbd eval`)", ""]
        for name, rd in rds.items():
            lines += [f"### {name}", "", *_rd_lines(rd), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in report.notes if not n.startswith("CompressAI")] + [""]
    return "\n".join(lines)


def _sizes(report: BenchReport) -> str:
    first = next(iter(report.codecs.values()), None)
    if not first:
        return "?"
    return ", ".join(sorted({f"{i.width}x{i.height}" for i in first.images}))


def _rd_lines(rd: dict[str, Any]) -> list[str]:
    from ckbd.tools.rd_eval import family_bd_rate_lines

    lines = ["| codec | bpp | PSNR (dB) | MS-SSIM |", "|---|---:|---:|---:|"]
    for m in rd.get("models", []):
        lines.append(f"| {m['label']} | {m['bpp']:.4f} | {m['psnr']:.2f} | {m['ms_ssim']:.4f} |")
    comp = rd.get("comparisons", {})
    for row in comp.get("at_equal_bpp", []):
        deltas = [f"{k.split('_vs_')[1]} {row[k]:+.2f} dB" for k in row if k.startswith("delta_psnr_vs_") and row[k] is not None]
        if deltas:
            lines.append(f"\n{row['label']} at {row['bpp']:.4f} bpp vs Pillow: " + ", ".join(deltas))
    return lines + [f"\n{line}" for line in family_bd_rate_lines(comp, skip_missing=True)]


def write_plots(report: BenchReport, out_dir: Path, rds: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Stage bars for decode and encode (ckbd and baselines), and one RD plot of every evaluated model
    (see :func:`combined_rd`)."""
    from ckbd.tools.report.plots import stage_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    ours = report.group("ckbd")
    cfg = report.config
    written = []
    for which in ("decode", "encode"):
        stages = tuple(dict.fromkeys(s for c in ours.values() for s in getattr(c, f"{which}_stages")))
        rows = {c.label: c.mean(f"{which}_ms") for c in ours.values()}
        path = out_dir / f"{which}_stages.png"
        stage_bars(rows, stages, path, f"{which} latency per stage, N={cfg.N} M={cfg.M}, {cfg.threads} threads")
        written.append(path)
    if rds:
        from ckbd.tools.rd_eval import plot_rd

        path = out_dir / "rd_psnr.png"
        plot_rd(combined_rd(rds), path)
        written.append(path)
    return written


def combined_rd(rds: dict[str, dict[str, Any]]) -> Any:
    """One RDReport of every evaluated model, the Pillow curves of the first evaluation. With several
    evaluations each keeps its own curve per architecture: they are different experiments (budgets)."""
    from ckbd.tools.rd_eval import RDPoint, RDReport

    def point(p: dict[str, Any], section: str = "") -> RDPoint:
        family = p.get("family", "")
        return RDPoint(p["label"], p["bpp"], p["psnr"], p["ms_ssim"],
                       family=f"{family} ({section})" if section and len(rds) > 1 else family)

    first = next(iter(rds.values()))
    models = [point(m, name) for name, rd in rds.items() for m in rd.get("models", [])]
    return RDReport(first.get("images", []), models,
                    {f: [point(p) for p in pts] for f, pts in first.get("curves", {}).items()})
