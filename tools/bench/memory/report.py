"""The ``large-images`` section of ``docs/RESULTS.md`` from ``ckbd bench memory`` JSON files.

The section lives in the hand-written part of the file, between its own markers, so that
``ckbd bench codecs --markdown`` keeps it and a new ``render`` replaces only it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECTION_BEGIN = "<!-- large-images: written by ckbd bench memory render -->"
SECTION_END = "<!-- /large-images -->"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if "skipped" in row:
        return f"not run (est. {_gb(row['estimated_job_bytes'] + 100e6)})"
    if "error" in row:
        return f"failed: {row['error']}"
    us = 1e6 * row["cpu_seconds"] / row["pixels"]
    plan = "" if row["plan"] == "whole" else f", {row['plan'].replace('tiles ', '')}"
    return f"{row['cpu_seconds']:.1f} s CPU ({us:.2f} µs/px; {row['seconds']:.0f} s wall), {_gb(row['peak'])}{plan}"


def _stage_table(found: dict[str, Any]) -> list[str]:
    """Per-stage resident set of one encode and decode (``ckbd bench memory stages``)."""
    what = "transforms replaced by random latents" if found["entropy_only"] else "a resized Kodak photo"
    lines = [f"### Where the peak is: {found['model']} at {found['width']}x{found['height']}", "",
             f"`ckbd bench memory stages {found['height']}x{found['width']}"
             f"{' --entropy-only' if found['entropy_only'] else ''}` ({what}, budget {found['budget']}): the "
             "process's resident set as each stage starts, its peak during the stage, and after it.", "",
             "| direction | stage | before | peak | after | seconds |", "|---|---|---:|---:|---:|---:|"]
    for kind in ("encode", "decode"):
        for row in found.get(kind, {}).get("stages", []):
            lines.append(f"| {kind} | {row['stage']} | {_gb(row['before'])} | {_gb(row['peak'])} | "
                         f"{_gb(row['after'])} | {row['seconds']:.1f} |")
    return [*lines, ""]


def _cell_plain(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    budget = f" (budget {_gb(row['budget_bytes'])})" if row.get("budget_bytes") else ""
    return (f"{row.get('cpu_seconds', float('nan')):.0f} s CPU ({row['seconds']:.0f} s wall), peak {_gb(row['peak'])}"
            f"{budget}, {row['plan']}")


def render(run: dict[str, Any], fit_points: list[dict[str, Any]], batch: dict[str, Any] | None,
           roundtrip: dict[str, Any] | None = None, tiling: dict[str, Any] | None = None,
           notes: list[str] | None = None, stages: list[dict[str, Any]] | None = None) -> str:
    """The markdown section: tables of the run, the fitted costs, the batch throughput."""
    lines = [SECTION_BEGIN, "", "## Large images: time and peak memory, whole and tiled", "",
             "`ckbd bench memory run` on this project's 2-core VM, shared with other jobs "
             f"(load average after: {', '.join(f'{x:.1f}' for x in run['load_after'])}; so times are CPU seconds "
             "of the job's process, and wall time, inflated by the load, is given for reference); ONNX Runtime "
             "CPU, one intra-op thread, each run in its own process under an RSS cap; peak = the process's peak resident "
             "set (interpreter, ONNX Runtime and the model included). A Kodak photo resized to each size. "
             "*Tiled* runs get the budget named in the heading (`--max-memory`) and tile only where the whole "
             "image does not fit it (tile core rows x cols + halo: pixels for encode, latent positions for "
             "decode). *Whole* runs too large for this shared machine were not made: their figure is the "
             "fitted estimate plus the ~0.1 GB the process holds before a job.", ""]
    models = list(dict.fromkeys(r["model"] for r in run["rows"]))
    for model in models:
        rows = [r for r in run["rows"] if r["model"] == model]
        budget = next((r["budget"] for r in rows if r.get("budget")), "")
        lines += [f"### {model} (tiled budget {budget})", "",
                  "| size | encode, whole | encode, tiled | decode, whole | decode, tiled | whole vs tiled |",
                  "|---|---|---|---|---|---|"]
        for size in dict.fromkeys(r["size"] for r in rows):
            pick = {(r["kind"], r.get("mode")): r for r in rows if r["size"] == size}
            agree = pick.get(("agreement", None), {})
            checks = []
            if "identical_streams" in agree:
                checks.append("same stream" if agree["identical_streams"] else "streams differ")
            if "max_grey_difference" in agree:
                checks.append(f"max {agree['max_grey_difference']} grey level(s), {agree['differing_values']} values")
            lines.append(f"| {size} | " + " | ".join(_cell(pick.get((k, m))) for k in ("encode", "decode")
                                                      for m in ("whole", "tiled")) + f" | {'; '.join(checks)} |")
        lines.append("")
    if notes:
        lines += [*(f"- {note}" for note in notes), ""]
    for found in stages or []:
        lines += _stage_table(found)
    if tiling:
        lines += ["### Tiled against whole on every Kodak image", "",
                  f"`ckbd check tiling`: {len(tiling['images'])} images encoded whole and with "
                  f"analysis tiles of {tiling['analysis_tile']} pixels, decoded whole and with synthesis tiles of "
                  f"{tiling['synthesis_tile']} positions: streams "
                  f"{'identical for every image' if tiling['all_streams_identical'] else 'NOT all identical'}, "
                  f"largest pixel difference {tiling['max_grey_difference']} grey level(s).", ""]
    if roundtrip:
        enc, dec = roundtrip["encode"], roundtrip["decode"]
        lines += [f"### {roundtrip['width']}x{roundtrip['height']} round trip, default budget", "",
                  f"`ckbd bench memory roundtrip {roundtrip['height']}x{roundtrip['width']}`"
                  + (f" (pixel limit raised to {roundtrip['max_pixels']} for the run)" if roundtrip.get("max_pixels")
                     else "") + f": encode {_cell_plain(enc)}; decode "
                  f"{_cell_plain(dec)}; {roundtrip.get('bytes', 0) / 1e6:.1f} MB, PSNR "
                  f"{roundtrip.get('psnr', float('nan')):.2f} dB against the (resized) original.", ""]
    if fit_points:
        lines += ["### Measured cost per pixel (the memory estimate's inputs)", "",
                  "`ckbd bench memory fit`: peak minus base RSS of one stage (or of everything but "
                  "the transform; random latents N(0, 3) in its place) at two sizes, slope in bytes per padded "
                  "pixel and intercept. `ckbd.runtime.memory.COSTS` is the line through two models per "
                  "architecture.", "",
                  "| model | entropy parameters | term | sizes | bytes/pixel | intercept |",
                  "|---|---|---|---|---:|---:|"]
        lines += [f"| {p['arch']} N={p['N']} M={p['M']} | {p.get('entropy_params', '')} | {p['term']} | "
                  f"{', '.join(p.get('sizes', ['768x512', '1536x1024']))} | {p['bytes_per_pixel']:.1f} | "
                  f"{p['intercept'] / 1e6:.0f} MB |" for p in fit_points]
        lines.append("")
    if batch:
        lines += ["### Batch decoding, `--jobs`", "",
                  f"`ckbd bench memory batch`: `ckbd decode` of {batch['files']} Kodak files with "
                  f"`--threads {batch['threads']}`: sequential {batch['sequential_s']:.1f} s, `--jobs {batch['jobs']}` "
                  f"{batch['jobs' + str(batch['jobs']) + '_s']:.1f} s: **{batch['speedup']:.2f}x**; outputs "
                  f"{'byte-identical' if batch['identical_outputs'] else 'DIFFERENT'}. Load average before/after: "
                  f"{', '.join(f'{x:.1f}' for x in batch['load_before'])} / "
                  f"{', '.join(f'{x:.1f}' for x in batch['load_after'])} (other agents share the 2 cores).", ""]
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Put ``section`` in the hand-written part of ``path`` (kept by ``ckbd bench codecs``)."""
    from ckbd.tools.report.results_sections import write_section as write

    write(path, section, SECTION_BEGIN, SECTION_END)


def render_report(run: Path, fits: list[Path], batch: Path | None, roundtrip_json: Path | None,
                  tiling: Path | None, notes: list[str], markdown: Path, stages: list[Path] = ()) -> None:
    """The ``large-images`` section of ``markdown`` from the JSON files of the other commands."""
    points = [p for path in fits for p in json.loads(path.read_text())["points"]]
    load = [json.loads(p.read_text()) if p else None for p in (batch, roundtrip_json, tiling)]
    write_section(markdown, render(json.loads(run.read_text()), points, *load, notes,
                                   [json.loads(p.read_text()) for p in stages]))
