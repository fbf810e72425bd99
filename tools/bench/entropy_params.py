"""Speed and rate of the integer entropy-parameter path against the float path, same weights.

The command is ``ckbd bench entropy-params [--checkpoint CKPT | --N 192 --M 320] [--size 512x768]``
(:mod:`ckbd.cli.bench.entropy_params`). :func:`run` exports the model twice (float and integer
entropy parameters, calibrated on ``calibration`` photos) and times hyper_synthesis, anchor_params
and nonanchor_params on ONNX Runtime (CPU), float and integer runs interleaved so that both see the
same machine load; reports the median per stage and the ratio. Given images, it also reports the
coded size of each path on them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import require
from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS, NONANCHOR_PARAMS

PARAM_STAGES = (HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS)


@dataclass
class StageSpeed:
    stage: str
    float_ms: float
    integer_ms: float

    @property
    def ratio(self) -> float:
        return self.integer_ms / self.float_ms


@dataclass
class ParamsBenchmark:
    N: int
    M: int
    size: tuple[int, int]
    threads: int
    repeats: int
    stages: list[StageSpeed]
    rate_change_pct: float | None = None  # integer vs float coded size on --images
    images: int = 0

    @property
    def total_ratio(self) -> float:
        return sum(s.integer_ms for s in self.stages) / sum(s.float_ms for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_ratio": self.total_ratio}


def _feeds(model_dir: Path, size: tuple[int, int], threads: int) -> dict[str, dict[str, np.ndarray]]:
    """Realistic inputs for each stage: the model's own analysis of a generated photo-like image."""
    from ckbd.runtime.codec import Encoder

    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = (127 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 20, (h, w)))
    image = np.clip(np.stack([image, image[::-1], image[:, ::-1]], axis=-1), 0, 255).astype(np.uint8)
    latents = Encoder.open(model_dir, threads=threads).encode_detailed(image, estimate=False).latents
    return {
        HYPER_SYNTHESIS: {"z_symbols": latents.z_symbols},
        ANCHOR_PARAMS: {},
        NONANCHOR_PARAMS: {"anchor_hat": latents.anchor_hat},
    }


def time_stages(float_dir: Path, integer_dir: Path, size: tuple[int, int], threads: int,
                repeats: int) -> list[StageSpeed]:
    """Median milliseconds per parameter stage, float and integer runs interleaved."""
    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(threads=threads)
    dirs = {"float": float_dir, "integer": integer_dir}
    runners = {path: {s: backend.load(d, s) for s in PARAM_STAGES} for path, d in dirs.items()}
    feeds = {path: _feeds(d, size, threads) for path, d in dirs.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for path in dirs:
            hyper = runners[path][HYPER_SYNTHESIS].run(feeds[path][HYPER_SYNTHESIS])["hyper"]
            for stage in PARAM_STAGES:
                stage_feeds = {**feeds[path][stage], **({"hyper": hyper} if stage != HYPER_SYNTHESIS else {})}
                start = time.perf_counter()
                runners[path][stage].run(stage_feeds)
                times.setdefault((path, stage), []).append((time.perf_counter() - start) * 1e3)
    return [StageSpeed(s, statistics.median(times["float", s]), statistics.median(times["integer", s]))
            for s in PARAM_STAGES]


def coded_size_change(float_dir: Path, integer_dir: Path, images: list[np.ndarray]) -> float:
    """Mean relative change of the file size (integer vs float), in percent."""
    from ckbd.runtime.codec import Encoder

    encoders = [Encoder.open(d) for d in (float_dir, integer_dir)]
    changes = [len(encoders[1].encode(im)) / len(encoders[0].encode(im)) - 1 for im in images]
    return 100 * float(np.mean(changes))


def run(checkpoint: Path | None, N: int, M: int, size: tuple[int, int], threads: int, repeats: int,
        calibration: Path, images: list[np.ndarray], seed: int = 0) -> ParamsBenchmark:
    torch = require("torch", "export", "The entropy-parameter benchmark (exporting the model)")
    from ckbd.export.integer_quantize import calibration_images, quantize_model
    from ckbd.export.onnx_export import export_model
    from ckbd.models.checkpoint import load_model
    from ckbd.models.config import ModelConfig
    from ckbd.models.registry import build_model
    from ckbd.runtime.entropy_tables import default_scale_table

    if checkpoint is not None:
        model = load_model(checkpoint)
    else:
        torch.manual_seed(seed)
        model = build_model(ModelConfig(arch="mbt2018-ckbd", N=N, M=M)).eval()
    spec = quantize_model(model, calibration_images(calibration, count=8), default_scale_table())
    with tempfile.TemporaryDirectory() as tmp:
        float_dir, integer_dir = Path(tmp) / "float", Path(tmp) / "integer"
        export_model(model, float_dir)
        export_model(model, integer_dir, integer_params=spec)
        stages = time_stages(float_dir, integer_dir, size, threads, repeats)
        rate = coded_size_change(float_dir, integer_dir, images) if images else None
    return ParamsBenchmark(model.config.N, model.config.M, size, threads, repeats, stages, rate, len(images))


def format_table(result: ParamsBenchmark) -> str:
    h, w = result.size
    lines = [f"N={result.N} M={result.M}, {w}x{h}, ONNX Runtime CPU, {result.threads} threads, "
             f"median of {result.repeats}", "",
             "| stage | float (ms) | integer (ms) | integer / float |", "|---|---:|---:|---:|"]
    for s in result.stages:
        lines.append(f"| {s.stage} | {s.float_ms:.1f} | {s.integer_ms:.1f} | {s.ratio:.2f} |")
    total_f = sum(s.float_ms for s in result.stages)
    total_i = sum(s.integer_ms for s in result.stages)
    lines.append(f"| all three | {total_f:.1f} | {total_i:.1f} | {result.total_ratio:.2f} |")
    if result.rate_change_pct is not None:
        lines += ["", f"coded size, integer vs float: {result.rate_change_pct:+.3f} % ({result.images} images)"]
    return "\n".join(lines)
