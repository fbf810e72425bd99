"""Every GPU backend present decodes the CPU's streams: flips per index stage, PSNR, latency.

Part of ``ckbd check gpu`` (:mod:`ckbd.tools.check.gpu.run`). :func:`run_backends`:

1. builds the TensorRT engines at every precision the model has graphs for, when TensorRT is
   installed (shared fp32 engines once; a failed build is a row of the report, not a crash);
2. decodes the CPU-encoded reference streams on every GPU backend present: TensorRT per precision,
   ONNX Runtime's CUDA provider, torch on CUDA (from the checkpoint), and runs the index-deciding
   stages on the CPU's own inputs;
3. reports, per backend: images decoded, scale-index flips per stage, PSNR (vs the original and vs
   the CPU decode), median latency per stage, and which executor ran each stage.

It uses whatever subset is installed and stops decoding at its deadline: images beyond it are
counted as skipped. It passes when every backend opened and decoded every image it ran (on the
integer entropy-parameter path: with no index flip) and at least one GPU backend was found
(or ``include_cpu`` added the CPU backends: a dry run).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.engines.profiles import ImageSize, SizeProfile
from ckbd.runtime.bitstream import INTEGER_PATH
from ckbd.runtime.profiling import DECODE_STAGES
from ckbd.runtime.stages import DECODER_STAGES, INDEX_STAGES
from ckbd.tools.check.gpu.compare import Reference, Target, TargetResult, evaluate, one_line
from ckbd.tools.check.gpu.targets import discover, tensorrt_missing

TIMED = ("decode", *DECODE_STAGES)


# --- inputs ----------------------------------------------------------------------------------


def profile_for(images: Sequence[tuple[str, np.ndarray]]) -> SizeProfile:
    """A size profile covering every image, tuned for the most common size (short builds)."""
    sizes = [ImageSize(img.shape[0], img.shape[1]).padded() for _, img in images]
    heights, widths = [s.height for s in sizes], [s.width for s in sizes]
    opt = Counter(sizes).most_common(1)[0][0]
    low, high = ImageSize(min(heights), min(widths)), ImageSize(max(heights), max(widths))
    return SizeProfile(low, opt, high)


# --- building --------------------------------------------------------------------------------


def build_sets(
    model_dir: Path, precisions: Sequence[str], profile: SizeProfile, device: int
) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """Build each precision set; returns the sets that built and a report per set."""
    from ckbd.engines.builder import BuildOptions, build_engines

    built, report = [], {}
    for precision in precisions:
        start = time.perf_counter()
        try:
            results = build_engines(
                model_dir, BuildOptions(precision=precision, profile=profile, device=device)
            )
        except Exception as exc:  # a failed set is reported, the others still run
            report[precision] = {"ok": False, "error": one_line(exc)}
            continue
        report[precision] = {
            "ok": True,
            "seconds": round(time.perf_counter() - start, 1),
            "built": [r.engine.name for r in results if not r.reused],
            "shared": [r.engine.name for r in results if r.reused],
        }
        built.append(precision)
    return tuple(built), report


# --- report ----------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _num(value: float | int | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_table(results: Sequence[TargetResult]) -> str:
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, "-", "-", "-", "-", "-", "-", f"not opened: {r.error}"])
            continue
        notes = [o.error for o in r.outcomes if o.error][:1] + r.stage_errors()[:1]
        if r.skipped:
            notes.append(f"{r.skipped} skipped (time budget)")
        rows.append([
            r.label,
            f"{r.decoded}/{len(r.outcomes)}",
            *(_num(r.flips(s)) for s in INDEX_STAGES[1:]),
            _num(r.mean_psnr("psnr")),
            "identical" if r.outcomes and all(o.identical_to_cpu for o in r.outcomes)
            else _num(r.mean_psnr("psnr_vs_cpu")),
            _num(r.median_ms("decode")),
            "; ".join(notes),
        ])
    headers = ["backend", "decoded", "anchor flips", "nonanchor flips", "PSNR dB", "vs CPU dB",
               "decode ms", "notes"]
    return format_table(headers, rows)


def latency_table(results: Sequence[TargetResult]) -> str:
    """Median milliseconds per stage (rows) and backend (columns)."""
    shown = [r for r in results if not r.error]
    keys = [k for k in TIMED if any(k in r.samples_ms for r in shown)]
    rows = [[key, *(_num(r.median_ms(key)) for r in shown)] for key in keys]
    return format_table(["median ms", *(r.label for r in shown)], rows)


def routing_table(results: Sequence[TargetResult]) -> str:
    shown = [r for r in results if r.routing]
    rows = [[stage, *(r.routing.get(stage, "-") for r in shown)] for stage in DECODER_STAGES]
    return format_table(["stage runs on", *(r.label for r in shown)], rows)


def index_diff_table(results: Sequence[TargetResult]) -> str:
    """Largest |difference| of each index stage's float output against the CPU."""
    shown = [r for r in results if r.outcomes]
    rows = []
    for stage in INDEX_STAGES:
        cells = []
        for r in shown:
            diffs = [o.stages[stage].max_abs_diff for o in r.outcomes if stage in o.stages]
            known = [d for d in diffs if d is not None]
            cells.append(f"{max(known):.3g}" if known else "-")
        rows.append([stage, *cells])
    return format_table(["max |diff| vs CPU", *(r.label for r in shown)], rows)


# --- main ------------------------------------------------------------------------------------


def run_targets(
    targets: Sequence[Target], references: Sequence[Reference], repeat: int, budget_s: float
) -> list[TargetResult]:
    deadline = time.monotonic() + budget_s
    return [evaluate(t, references, repeat, deadline) for t in targets]


@dataclass
class BackendsReport:
    """What the backend comparison found; :meth:`to_dict` is its part of the JSON report."""

    ok: bool
    entropy_params: str
    results: list[TargetResult]
    builds: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_checked: dict[str, str] = field(default_factory=dict)  # backend -> why it is absent

    def failure(self) -> str:
        """Why the comparison failed, in one line ('' when it passed)."""
        if self.ok:
            return ""
        failed = [r.label for r in self.results if not r.passed(self.entropy_params == INTEGER_PATH)]
        if failed:
            return f"backends that failed: {', '.join(failed)}"
        return "no GPU backend found (" + "; ".join(f"{k}: {v}" for k, v in self.not_checked.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": None, "ok": self.ok, "failure": self.failure(), "builds": self.builds,
                "not_checked": self.not_checked, "backends": [r.to_dict() for r in self.results]}

    def render(self) -> str:
        """Not-checked backends, builds, then four tables."""
        lines = [f"not checked: {name}: {why}" for name, why in self.not_checked.items()]
        lines += [f"build {precision}: " + ("ok" if build["ok"] else f"FAILED {build['error']}")
                  for precision, build in self.builds.items()]
        for table in (summary_table, latency_table, routing_table, index_diff_table):
            lines += ["", table(self.results)]
        return "\n".join(lines)


def run_backends(model_dir: Path, images: Sequence[tuple[str, np.ndarray]], references: Sequence[Reference],
                 device: int, checkpoint: Path | None, include_cpu: bool, no_build: bool, repeat: int,
                 budget_s: float) -> BackendsReport:
    """Build (TensorRT), discover and run every backend on ``references`` within ``budget_s`` of decoding."""
    from ckbd.engines.policy import available_precisions
    from ckbd.runtime.manifest import Manifest

    started = time.monotonic()
    manifest = Manifest.load(model_dir)
    builds: dict[str, dict[str, Any]] = {}
    trt_precisions = available_precisions(manifest)
    if tensorrt_missing() is None and not no_build:
        trt_precisions, builds = build_sets(model_dir, trt_precisions, profile_for(images), device)
    found = discover(model_dir, manifest, trt_precisions, device, checkpoint, include_cpu)
    results = run_targets(found.targets, references, repeat, max(0.0, budget_s - (time.monotonic() - started)))
    exact = manifest.entropy_params == INTEGER_PATH
    any_gpu = any(t.gpu for t in found.targets)
    ok = bool(results) and all(r.passed(exact) for r in results) and (any_gpu or include_cpu)
    return BackendsReport(ok, manifest.entropy_params, results, builds, found.absent)
