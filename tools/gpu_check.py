"""The one check a machine with a GPU runs: every GPU backend present, against the CPU.

The command is ``ckbd check gpu [MODEL_DIR] [--images DIR] [--json FILE] [--checkpoint CKPT]``
(:mod:`ckbd.cli.check_gpu`); :func:`run_check` is the check itself:

1. encodes and decodes every image on ONNX Runtime's CPU provider (the reference);
2. builds the TensorRT engines at every precision the model has graphs for, when TensorRT is
   installed (shared fp32 engines once; a failed build is a row of the report, not a crash);
3. decodes the CPU-encoded streams on every GPU backend present: TensorRT per precision, ONNX
   Runtime's CUDA provider, torch on CUDA (from ``--checkpoint``, default: the shipped checkpoint for
   the shipped model), and runs the index-deciding stages on the CPU's own inputs;
4. prints, per backend: images decoded, scale-index flips per stage, PSNR (vs the original and vs
   the CPU decode), median latency per stage, and which executor ran each stage; writes one JSON.

It uses whatever subset is installed and stays within ``--budget-s`` (default 420 s) of decoding:
images beyond it are counted as skipped. Exit status 0 when every backend opened and decoded every
image it ran (on the integer entropy-parameter path: with no index flip), 1 otherwise or when no
GPU backend was found (:attr:`GpuCheckReport.ok`). ``--include-cpu`` adds the CPU backends as targets (a dry run without a GPU).
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.engines.profiles import ImageSize, SizeProfile
from ckbd.errors import CkbdError, installed
from ckbd.runtime.bitstream import INTEGER_PATH
from ckbd.runtime.profiling import DECODE_STAGES
from ckbd.runtime.stages import DECODER_STAGES, INDEX_STAGES
from ckbd.tools.gpu_compare import Reference, Target, TargetResult, evaluate, make_reference, one_line
from ckbd.tools.gpu_targets import discover, tensorrt_missing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
CHECKOUT_IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data"
TIMED = ("decode", *DECODE_STAGES)


# --- inputs ----------------------------------------------------------------------------------


def load_images(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    if not Path(folder).is_dir():
        raise CkbdError(f"image folder {folder} does not exist")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CkbdError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = []
    for path in paths[:limit]:
        with Image.open(path) as img:
            images.append((path.name, np.asarray(img.convert("RGB"), dtype=np.uint8)))
    return images


def profile_for(images: Sequence[tuple[str, np.ndarray]]) -> SizeProfile:
    """A size profile covering every image, tuned for the most common size (short builds)."""
    sizes = [ImageSize(img.shape[0], img.shape[1]).padded() for _, img in images]
    heights, widths = [s.height for s in sizes], [s.width for s in sizes]
    opt = Counter(sizes).most_common(1)[0][0]
    low, high = ImageSize(min(heights), min(widths)), ImageSize(max(heights), max(widths))
    return SizeProfile(low, opt, high)


def environment() -> dict[str, str]:
    """Versions of everything that decides the numbers, as far as it is installed."""
    import onnxruntime as ort

    env = {
        "python": platform.python_version(),
        "machine": platform.platform(),
        "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
    }
    if installed("torch"):
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        env["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda}; {cuda})"
    else:
        env["torch"] = "not installed"
    if tensorrt_missing() is None:
        from ckbd.engines import tensorrt_version

        env["tensorrt"] = tensorrt_version()
    return env


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
class GpuCheckConfig:
    """The command's options; ``model_dir`` None is the shipped model."""

    model_dir: Path | None = None
    images: Path = CHECKOUT_IMAGES
    checkpoint: Path | None = None
    device: int = 0
    limit: int | None = None
    repeat: int = 3
    budget_s: float = 420.0
    no_build: bool = False
    include_cpu: bool = False


@dataclass
class GpuCheckReport:
    """Everything the check found; :meth:`to_dict` is the JSON report, :func:`render` the text."""

    ok: bool
    environment: dict[str, str]
    model_dir: Path
    entropy_params: str
    fingerprint: str
    references: list[Reference]
    results: list[TargetResult]
    unusable: dict[str, str] = field(default_factory=dict)  # image -> why the CPU could not code it
    builds: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_checked: dict[str, str] = field(default_factory=dict)  # backend -> why it is absent
    seconds: float = 0.0

    def failure(self) -> str:
        """Why the check failed, in one line ('' when it passed)."""
        if self.ok:
            return ""
        failed = [r.label for r in self.results if not r.passed(self.entropy_params == INTEGER_PATH)]
        if failed:
            return f"backends that failed: {', '.join(failed)}"
        return "no GPU backend found (" + "; ".join(f"{k}: {v}" for k, v in self.not_checked.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "environment": self.environment,
            "model": {"dir": str(self.model_dir), "entropy_params": self.entropy_params,
                      "fingerprint": self.fingerprint},
            "images": [{"image": r.name, "shape": list(r.image.shape), "bytes": len(r.data),
                        "cpu_psnr": r.psnr} for r in self.references],
            "images_not_coded_on_cpu": self.unusable,
            "builds": self.builds,
            "not_checked": self.not_checked,
            "backends": [r.to_dict() for r in self.results],
            "seconds": self.seconds,
        }


def run_check(config: GpuCheckConfig, log: Callable[[str], None] = lambda line: None) -> GpuCheckReport:
    """Run the whole check; ``log`` gets the environment line before the (long) builds start."""
    from ckbd.engines.policy import available_precisions
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.manifest import Manifest
    from ckbd.runtime.package import default_model_dir

    started = time.monotonic()
    model_dir = Path(config.model_dir) if config.model_dir else default_model_dir()
    manifest = Manifest.load(model_dir)
    images = load_images(config.images, config.limit)
    env = environment()
    log(" | ".join(f"{k} {v}" for k, v in env.items()))
    encoder, decoder = Encoder.open(model_dir), Decoder.open(model_dir)
    references, unusable = [], {}
    for name, image in images:
        try:
            references.append(make_reference(name, image, encoder, decoder))
        except CkbdError as exc:  # the image is left out; the CPU path has its own tests
            unusable[name] = one_line(exc)
    if not references:
        raise CkbdError(f"no image could be coded on the CPU: {unusable}")

    builds: dict[str, dict[str, Any]] = {}
    trt_precisions = available_precisions(manifest)
    if tensorrt_missing() is None and not config.no_build:
        trt_precisions, builds = build_sets(model_dir, trt_precisions, profile_for(images), config.device)
    found = discover(model_dir, manifest, trt_precisions, config.device, config.checkpoint, config.include_cpu)
    budget = max(0.0, config.budget_s - (time.monotonic() - started))
    results = run_targets(found.targets, references, config.repeat, budget)

    exact = manifest.entropy_params == INTEGER_PATH
    any_gpu = any(t.gpu for t in found.targets)
    ok = bool(results) and all(r.passed(exact) for r in results) and (any_gpu or config.include_cpu)
    return GpuCheckReport(ok, env, model_dir, manifest.entropy_params, manifest.fingerprint, references, results,
                          unusable, builds, found.absent, round(time.monotonic() - started, 1))


def render(report: GpuCheckReport) -> str:
    """The text the command prints after the environment line: what was left out, builds, four tables."""
    lines = [f"model {report.model_dir} ({report.entropy_params} entropy parameters), {len(report.references)} "
             f"images; CPU reference PSNR {np.mean([r.psnr for r in report.references]):.2f} dB"]
    lines += [f"not checked: {name}: {why}" for name, why in {**report.not_checked, **report.unusable}.items()]
    lines += [f"build {precision}: " + ("ok" if build["ok"] else f"FAILED {build['error']}")
              for precision, build in report.builds.items()]
    for table in (summary_table, latency_table, routing_table, index_diff_table):
        lines += ["", table(report.results)]
    return "\n".join(lines)
