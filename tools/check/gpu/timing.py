"""Per-stage decode latency on a torch device: CUDA events around each network stage.

A wall clock around a stage measures when the host got control back, not the device's work: a
CUDA stage returns as soon as its kernels are queued (``hyper_synthesis`` keeps its output on the
device). So each runner of a decoder is wrapped in :class:`TimedRunner`, which records a CUDA
event on the current stream before and after it; the elapsed times are read once the decode has
returned (the image is on the host, so every kernel has run). The range coder's steps run on the
host and keep the codec's wall-clock timer. On the CPU the same code reads the wall clock.
The whole decode is timed on the wall clock: everything included, coder and transfers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckbd.runtime.backend import Runner, Tensor
from ckbd.runtime.profiling import ANCHOR_DECODE, NONANCHOR_DECODE, Z_DECODE, StageTimer

#: Decode steps that run on the host (the range coder), timed on the wall clock.
HOST_STEPS = (Z_DECODE, ANCHOR_DECODE, NONANCHOR_DECODE)


class Clock:
    """Marks points in a device's work: CUDA events on a CUDA device, the wall clock elsewhere."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    @property
    def name(self) -> str:
        return "cuda events" if self.cuda else "wall clock"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record(self.torch.cuda.current_stream(self.device))
        return event

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks; on CUDA only after :meth:`synchronize`."""
        return float(start.elapsed_time(end)) if self.cuda else (end - start) * 1e3

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)


class TimedRunner:
    """A runner that marks the device's work before and after each run into ``spans``."""

    def __init__(self, inner: Runner, stage: str, clock: Clock, spans: list[tuple[str, Any, Any]]) -> None:
        self.inner, self.stage, self.clock, self.spans = inner, stage, clock, spans
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        start = self.clock.mark()
        out = self.inner.run(feeds, keep)
        self.spans.append((self.stage, start, self.clock.mark()))
        return out

    def close(self) -> None:
        self.inner.close()


@dataclass
class TimedDecoder:
    """A decoder whose runners are :class:`TimedRunner`; :meth:`decode` returns the image and times."""

    decoder: Any
    clock: Clock
    spans: list[tuple[str, Any, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        runners = self.decoder.model.runners
        for stage, runner in list(runners.items()):
            runners[stage] = TimedRunner(runner, stage, self.clock, self.spans)

    def routing(self) -> dict[str, str]:
        from ckbd.tools.check.gpu.compare import describe_runner

        return {stage: describe_runner(r.inner) for stage, r in self.decoder.model.runners.items()}

    def decode(self, data: bytes) -> tuple[Any, dict[str, float]]:
        """(the decode result, milliseconds: ``decode`` on the wall clock, each stage on the clock)."""
        self.spans.clear()
        timer = StageTimer()
        start = time.perf_counter()
        result = self.decoder.decode_detailed(data, timer)
        self.clock.synchronize()
        times = {"decode": (time.perf_counter() - start) * 1e3}
        times.update({k: v for k, v in timer.times_ms.items() if k in HOST_STEPS})
        for stage, begin, end in self.spans:
            times[stage] = times.get(stage, 0.0) + self.clock.elapsed_ms(begin, end)
        return result, times


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds per key over ``runs`` (three decimals)."""
    keys = dict.fromkeys(k for run in runs for k in run)
    return {k: round(statistics.median(run[k] for run in runs if k in run), 3) for k in keys}


def measure(timed: TimedDecoder, data: bytes, repeat: int, warmup: int = 2) -> tuple[Any, list[dict[str, float]]]:
    """Decode ``data`` ``warmup`` times untimed (lazy kernels, allocator), then ``repeat`` times."""
    for _ in range(warmup):
        timed.decoder.decode(data)
    runs, result = [], None
    for _ in range(max(1, repeat)):
        result, times = timed.decode(data)
        runs.append(times)
    return result, runs


def pixels_psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR between two uint8 images; None when identical (JSON has no infinity)."""
    from ckbd.runtime.metrics import psnr

    value = psnr(a, b)
    return None if not np.isfinite(value) else round(float(value), 3)
