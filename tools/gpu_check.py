"""End-to-end TensorRT check for a GPU machine.

    python -m ckbd.tools.gpu_check MODEL_DIR --images DIR [--device 0] [--limit N] [--repeat N]

1. builds the engines at every precision the model directory has graphs for;
2. encodes and decodes every image with ONNX Runtime and with TensorRT at each precision;
3. checks that TensorRT-encoded streams decode with TensorRT deterministically and at the quality
   ONNX Runtime reaches (a scale-index mismatch between encoder and decoder shows up as a collapse
   in PSNR), and reports whether streams and cross-backend decodes agree;
4. prints a per-stage latency table.

Per-stage times come from ``ckbd.runtime.profiling`` through the codec's ``*_detailed`` calls when
both exist (every TensorRT run ends with a stream synchronisation, so a stage's wall time is its
latency); otherwise only whole encode/decode calls are timed. Beyond that the codec is used only
through ``Encoder.open``/``Decoder.open``, ``encode`` and ``decode``.
Exit status: 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.engines.builder import ImageSize, SizeProfile
from ckbd.errors import CkbdError
from ckbd.tools.metrics import psnr

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Timings:
    """Milliseconds per call, by stage name (plus ``encode``/``decode`` for whole images)."""

    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, key: str, ms: float) -> None:
        self.samples[key].append(ms)

    def median_ms(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def clear(self) -> None:
        self.samples.clear()


def _stage_timer() -> Any | None:
    """A fresh ``ckbd.runtime.profiling.StageTimer`` when that module exists, else None."""
    try:
        from ckbd.runtime.profiling import StageTimer
    except ImportError:
        return None
    return StageTimer()


# --- codec runs ------------------------------------------------------------------------------


@dataclass
class Config:
    """One way of running the codec: a backend, its options and where its times go.

    Per-stage times come from the codec's ``StageTimer`` (``encode_detailed``/``decode_detailed``)
    when the codec offers it; otherwise only whole encode/decode calls are timed here.
    """

    label: str
    backend: str
    options: dict[str, Any]
    timings: Timings = field(default_factory=Timings)
    encoder: Any = None
    decoder: Any = None

    def open(self, model_dir: Path) -> None:
        from ckbd.runtime.codec import Decoder, Encoder

        self.encoder = Encoder.open(model_dir, backend=self.backend, **self.options)
        self.decoder = Decoder.open(model_dir, backend=self.backend, **self.options)

    def encode(self, image: np.ndarray) -> bytes:
        return bytes(self._run(self.encoder, "encode", image, lambda r: r.data))

    def decode(self, data: bytes) -> np.ndarray:
        return np.asarray(self._run(self.decoder, "decode", data, lambda r: r.image))

    def _run(self, codec: Any, method: str, arg: Any, unpack: Callable[[Any], Any]) -> Any:
        timer = _stage_timer()
        detailed = getattr(codec, f"{method}_detailed", None)
        start = time.perf_counter()
        if timer is not None and detailed is not None:
            result = unpack(detailed(arg, timer))
        else:
            result = getattr(codec, method)(arg)
        self.timings.add(method, (time.perf_counter() - start) * 1e3)
        for stage, ms in getattr(timer, "times_ms", {}).items():
            self.timings.add(stage, ms)
        return result


@dataclass
class ImageResult:
    image: str
    config: str
    psnr: float  # TensorRT stream decoded by TensorRT, vs the original
    reference_psnr: float  # ONNX Runtime stream decoded by ONNX Runtime, vs the original
    deterministic: bool  # two TensorRT decodes (and encodes) gave identical results
    same_bytes: bool  # TensorRT and ONNX Runtime produced the same stream
    cross_psnr: float  # TensorRT stream: TensorRT decode vs ONNX Runtime decode
    error: str = ""

    def passed(self, tolerance_db: float) -> bool:
        quality_kept = self.psnr >= self.reference_psnr - tolerance_db
        return not self.error and self.deterministic and quality_kept


@dataclass
class Reference:
    """ONNX Runtime's stream and quality for one image, computed once."""

    data: bytes
    psnr: float


def reference_for(image: np.ndarray, reference: Config) -> Reference:
    data = reference.encode(image)
    return Reference(data, psnr(image, reference.decode(data)))


def check_image(
    name: str, image: np.ndarray, ref: Reference, reference: Config, config: Config
) -> ImageResult:
    """Encode/decode one image with ``config`` and compare with the ONNX Runtime reference."""
    try:
        data = config.encode(image)
        decoded = config.decode(data)
        deterministic = config.encode(image) == data and np.array_equal(
            config.decode(data), decoded
        )
        cross = reference.decode(data)
    except Exception as exc:  # a diagnostic run reports every failure instead of stopping
        nan, error = float("nan"), f"{type(exc).__name__}: {exc}"
        return ImageResult(name, config.label, nan, ref.psnr, False, False, nan, error)
    return ImageResult(
        name,
        config.label,
        psnr(image, decoded),
        ref.psnr,
        deterministic,
        data == ref.data,
        psnr(decoded, cross),
    )


# --- inputs ----------------------------------------------------------------------------------


def load_images(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CkbdError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = []
    for path in paths[:limit]:
        with Image.open(path) as img:
            images.append((path.name, np.asarray(img.convert("RGB"), dtype=np.uint8)))
    return images


def profile_for(images: Sequence[tuple[str, np.ndarray]]) -> SizeProfile:
    """A size profile covering every image, tuned for the most common size."""
    sizes = [ImageSize(img.shape[0], img.shape[1]).padded() for _, img in images]
    heights, widths = [s.height for s in sizes], [s.width for s in sizes]
    opt = Counter(sizes).most_common(1)[0][0]
    low, high = ImageSize(min(heights), min(widths)), ImageSize(max(heights), max(widths))
    return SizeProfile(low, opt, high)


# --- report ----------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def latency_table(configs: Sequence[Config]) -> str:
    """Median milliseconds per stage (in the order first seen) and per whole encode/decode."""
    seen = dict.fromkeys(
        k for c in configs for k in c.timings.samples if k not in ("encode", "decode")
    )
    keys = [*seen, "encode", "decode"]
    rows = [[key, *(_ms(c.timings.median_ms(key)) for c in configs)] for key in keys]
    return format_table(["median ms", *(c.label for c in configs)], rows)


def results_table(results: Sequence[ImageResult], tolerance_db: float) -> str:
    rows = [
        [
            r.image,
            r.config,
            f"{r.psnr:.2f}",
            f"{r.reference_psnr:.2f}",
            "yes" if r.deterministic else "NO",
            "yes" if r.same_bytes else "no",
            f"{r.cross_psnr:.1f}",
            "ok" if r.passed(tolerance_db) else f"FAIL {r.error}".strip(),
        ]
        for r in results
    ]
    headers = [
        "image",
        "engines",
        "PSNR trt",
        "PSNR ort",
        "determ.",
        "same bytes",
        "trt~ort dec",
        "",
    ]
    return format_table(headers, rows)


# --- main ------------------------------------------------------------------------------------


def _environment(device: int) -> str:
    from ckbd.engines import tensorrt_version
    from ckbd.engines.cuda_memory import open_cuda

    api = open_cuda(device)
    gpu = api.device_properties()
    return (
        f"TensorRT {tensorrt_version()} | GPU {device}: {gpu.name} "
        f"(compute {gpu.compute_capability_str}) | CUDA via {api.name}"
    )


def run_check(args: argparse.Namespace) -> int:
    from ckbd.engines import ensure_tensorrt
    from ckbd.engines.builder import BuildOptions, available_precisions, build_engines
    from ckbd.runtime.manifest import Manifest

    ensure_tensorrt("the GPU check")
    print(_environment(args.device))
    model_dir: Path = args.model_dir
    images = load_images(args.images, args.limit)
    precisions = available_precisions(Manifest.load(model_dir))
    if not args.no_build:
        profile = profile_for(images)
        for precision in precisions:
            build_engines(
                model_dir, BuildOptions(precision=precision, profile=profile, device=args.device)
            )

    reference = Config("ort", "onnxruntime", {})
    configs = [
        Config(f"trt-{p}", "tensorrt", {"precision": p, "device": args.device}) for p in precisions
    ]
    for config in [reference, *configs]:
        config.open(model_dir)

    _, first = images[0]  # warm-up: lazy CUDA/ORT initialisation is not a stage's latency
    for config in [reference, *configs]:
        config.decode(config.encode(first))
        config.timings.clear()

    results = []
    for _ in range(args.repeat):
        for name, image in images:
            ref = reference_for(image, reference)
            results += [check_image(name, image, ref, reference, c) for c in configs]
    print()
    print(results_table(results, args.tolerance_db))
    print()
    print(latency_table([reference, *configs]))
    failed = [r for r in results if not r.passed(args.tolerance_db)]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ckbd.tools.gpu_check", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("model_dir", type=Path, help="exported model directory")
    parser.add_argument("--images", type=Path, required=True, help="folder of test images")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the images (for timing)")
    parser.add_argument(
        "--tolerance-db",
        type=float,
        default=1.0,
        help="allowed PSNR loss vs ONNX Runtime (a scale-index mismatch costs far more)",
    )
    parser.add_argument("--no-build", action="store_true", help="use the engines already built")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        return run_check(args)
    except CkbdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
