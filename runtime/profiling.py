"""Per-stage wall-clock timing, shared by the codec, ``ckbd profile`` and the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ckbd.runtime.stages import ANALYSIS, ANCHOR_PARAMS, HYPER_SYNTHESIS, LATENT_SYNTHESIS, NONANCHOR_PARAMS

# Timer names of the coding steps; graph steps are timed under their stage names.
Z_ENCODE, Z_DECODE = "z_encode", "z_decode"
ANCHOR_ENCODE, ANCHOR_DECODE = "anchor_encode", "anchor_decode"
NONANCHOR_ENCODE, NONANCHOR_DECODE = "nonanchor_encode", "nonanchor_decode"

#: Every timed step of a decode and of an encode, in schedule order.
DECODE_STAGES = (Z_DECODE, HYPER_SYNTHESIS, ANCHOR_PARAMS, ANCHOR_DECODE, NONANCHOR_PARAMS, NONANCHOR_DECODE,
                 LATENT_SYNTHESIS)
ENCODE_STAGES = (ANALYSIS, Z_ENCODE, HYPER_SYNTHESIS, ANCHOR_PARAMS, ANCHOR_ENCODE, NONANCHOR_PARAMS,
                 NONANCHOR_ENCODE)


@dataclass
class StageTimer:
    """Accumulates milliseconds per stage name for one encode or decode."""

    times_ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times_ms[name] = self.times_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


class NullTimer(StageTimer):
    """Timer that records nothing: the codec's default, so timing costs nothing unless asked for."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


def median_times(runs: list[dict[str, float]], stages: tuple[str, ...]) -> dict[str, float]:
    """Median per stage over repeated runs, plus ``total`` (median of per-run sums)."""
    result = {s: statistics.median(r.get(s, 0.0) for r in runs) for s in stages}
    result["total"] = statistics.median(sum(r.get(s, 0.0) for s in stages) for r in runs)
    return result
