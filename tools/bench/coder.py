"""Throughput and rate overhead of the CPU entropy coder on synthetic Gaussian latents.

The workload mimics what the codec hands the coder: symbols ``round(N(0, s))`` with scales
log-uniform in [0.11, 20], each coded under the table that :func:`scale_to_index` picks from the
default 64-entry scale table. They are coded as the codec codes one pass: cut into the substreams the
encoder would choose (:mod:`ckbd.runtime.substreams`), on ``threads`` threads. Torch-free, so it runs
wherever the runtime runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ckbd.progress import progress as progress_bar
from ckbd.runtime import grouping, substreams
from ckbd.runtime.coder import IndexedCoder
from ckbd.runtime.entropy_tables import (
    default_scale_table,
    gaussian_tables,
    scale_to_index,
)

SCALE_RANGE = (0.11, 20.0)


@dataclass(frozen=True)
class CoderBenchResult:
    encode_msym_s: float  # million symbols per second, median over repeats
    decode_msym_s: float
    overhead_pct: float  # coded size (tables of contents included) vs the ideal -sum(log2 p), in percent
    n_symbols: int
    bytes: int
    grouping: str  # how symbols are grouped by table: "compiled" (a C loop) or "numpy" (its fallback)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CoderRun:
    """A ``ckbd bench coder`` run: its result, and how the symbols were cut and coded (kept out of
    :class:`CoderBenchResult`, which reports of ``ckbd bench codecs`` embed, so that earlier ones load
    and re-serialize unchanged)."""

    result: CoderBenchResult
    substreams: int  # how many the encoder's rule cut the symbols into
    threads: int  # threads that coded them (at most one per substream)
    coder: str  # "compiled" (releases the GIL) or "constriction" (its fallback, one thread)

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "substreams": self.substreams, "threads": self.threads, "coder": self.coder}


def gaussian_workload(n: int, seed: int, scale_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symbols ``round(N(0, s))`` and their table indexes, for log-uniform scales ``s``."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])
    scales = np.exp(rng.uniform(lo, hi, n)).astype(np.float32)
    symbols = np.rint(rng.normal(0.0, scales)).astype(np.int32)
    return symbols, scale_to_index(scales, scale_table)


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def run_coder_benchmark(
    symbols: int = 500_000, seed: int = 0, repeats: int = 5, progress: bool = True
) -> CoderBenchResult:
    """:func:`measure` on one thread, the figures ``ckbd bench codecs`` reports."""
    return measure(symbols, seed, repeats, progress, threads=1).result


def measure(symbols: int = 500_000, seed: int = 0, repeats: int = 5, progress: bool = True,
            threads: int = 1) -> CoderRun:
    """Encode and decode ``symbols`` symbols ``repeats`` times on ``threads`` threads (0: the cores
    this process may use); report medians. One untimed round trip first checks correctness and warms
    the coder's buffers.
    """
    table = default_scale_table()
    coder = IndexedCoder(gaussian_tables(table))
    values, indexes = gaussian_workload(symbols, seed, table)
    values, indexes = values.reshape(1, -1, 1), indexes.reshape(1, -1, 1)  # one pass, a symbol per row

    def encode() -> tuple[bytes, int]:
        parts = substreams.encode_pass(coder, values, indexes, threads)
        return substreams.payload(parts, len(parts) > 1), len(parts)

    def decode(data: bytes, count: int) -> np.ndarray:
        return substreams.decode_pass(coder, data, indexes, count > 1, threads)

    data, count = encode()
    if not np.array_equal(decode(data, count), values):
        raise RuntimeError("entropy coder round trip failed")  # a bug, not a user error
    enc_times, dec_times = [], []
    for _ in progress_bar(range(repeats), desc="bench coder", unit="run", enabled=progress):
        t_enc, (data, count) = _timed(encode)
        t_dec, _ = _timed(decode, data, count)
        enc_times.append(t_enc)
        dec_times.append(t_dec)
    ideal = coder.estimate_bits(values, indexes)
    result = CoderBenchResult(
        encode_msym_s=symbols / statistics.median(enc_times) / 1e6,
        decode_msym_s=symbols / statistics.median(dec_times) / 1e6,
        overhead_pct=(8 * len(data) / ideal - 1) * 100 if ideal > 0 else 0.0,
        n_symbols=symbols,
        bytes=len(data),
        grouping="compiled" if coder.releases_gil or grouping.compiled is not None else "numpy",
    )
    return CoderRun(result, count, substreams.worker_count(coder, threads, count),
                    "compiled" if coder.releases_gil else "constriction")
