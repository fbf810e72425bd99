"""Decode throughput and latency: in-process vs a Triton server (whole and split, 1 and 2 instances).

The command is ``ckbd bench serving [--images DIR] [--count N] [--json FILE] [--markdown docs/RESULTS.md]``
(:mod:`ckbd.cli.bench.serving`; needs the ``serve`` extra).

Each configuration decodes the same bitstreams (the images encoded once, in-process) from 1 and from 4
concurrent clients; a client is a thread with its own connection (Triton) or its own Decoder
(in-process). Every decoder, in-process or a Triton instance, runs ONNX Runtime on one thread, so the
comparison is per instance. The split server uses the Python stand-ins for the stage models (the only
backend the bundled server has). :func:`replace_section` replaces this benchmark's section in the
hand-written part of ``docs/RESULTS.md``, which ``ckbd bench codecs`` keeps.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckbd.errors import CkbdError

SECTION_BEGIN = "<!-- bench_serving: begin -->"
SECTION_END = "<!-- bench_serving: end -->"


@dataclass
class Measurement:
    config: str
    clients: int
    images: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


def measure(config: str, streams: list[bytes], clients: int, make_decode: Callable[[], Callable[[bytes], np.ndarray]],
            expected: list[np.ndarray]) -> Measurement:
    """Decode every stream once, split across ``clients`` threads; checks each image against ``expected``."""
    decoders = [make_decode() for _ in range(clients)]
    decoders[0](streams[0])  # warm-up (first-run allocations, connections)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(index: int) -> None:
        decode = decoders[index]
        for i in range(index, len(streams), clients):
            start = time.perf_counter()
            image = decode(streams[i])
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not np.array_equal(image, expected[i]):
                    errors.append(f"image {i}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for decode in decoders:
        getattr(decode, "close", lambda: None)()
    if errors:
        raise CkbdError(f"{config}: {errors[0]} differs from the in-process reference decode")
    ms = np.array(latencies) * 1000
    return Measurement(config, clients, len(streams), len(streams) / wall,
                       float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def run(images: list[Path], clients: tuple[int, ...] = (1, 4),
        on_row: Callable[[str], None] = lambda row: None) -> list[Measurement]:
    """Every configuration with each number of ``clients``; ``on_row`` gets the table's header, then each
    row as it is measured."""
    from ckbd.errors import require

    require("tritonclient.grpc", "serve", "The serving benchmark")
    on_row(ROW_HEADER)

    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import read_image
    from ckbd.runtime.package import default_model_dir
    from ckbd.serving.client import TritonDecoder
    from ckbd.serving.repository import RepoOptions, write_repository
    from ckbd.serving.server import TritonServer

    model_dir = default_model_dir()
    encoder = Encoder.open(model_dir, threads=1)
    streams = [encoder.encode(read_image(p, quiet=True)) for p in images]
    reference = Decoder.open(model_dir, threads=1)
    expected = [reference.decode(s) for s in streams]
    results = []
    for k in clients:
        def local() -> Callable[[bytes], np.ndarray]:
            return Decoder.open(model_dir, threads=1).decode

        results.append(measure("in-process", streams, k, local, expected))
        on_row(_row(results[-1]))
    for split in (False, True):
        for instances in (1, 2):
            name = f"Triton {'split' if split else 'whole'}, {instances} instance{'s' if instances > 1 else ''}"
            with tempfile.TemporaryDirectory(prefix="ckbd-bench-") as tmp:
                repo = Path(tmp) / "repo"
                write_repository(repo, model_dir, RepoOptions(instances=instances, split=split, stage_backend="python"))
                with TritonServer(repo, log_path=Path(tmp) / "server.log") as server:
                    for k in clients:
                        def remote() -> TritonDecoder:
                            return TritonDecoder(server.grpc_url)

                        results.append(measure(name, streams, k, lambda: _bound(remote()), expected))
                        on_row(_row(results[-1]))
    return results


class _bound:
    """A TritonDecoder as a callable with ``close``."""

    def __init__(self, client: object) -> None:
        self.client = client

    def __call__(self, data: bytes) -> np.ndarray:
        return self.client.decode(data)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.client.close()  # type: ignore[attr-defined]


#: The header of the rows :func:`run` reports as it goes.
ROW_HEADER = "| configuration | clients | images/s | p50 (ms) | p99 (ms) |"


def _row(m: Measurement) -> str:
    return f"| {m.config} | {m.clients} | {m.images_per_s:.2f} | {m.p50_ms:.0f} | {m.p99_ms:.0f} |"


def markdown(results: list[Measurement], images: list[Path], load: tuple[list[float], list[float]]) -> str:
    size = "x".join(str(s) for s in _size(images[0]))
    lines = [
        SECTION_BEGIN,
        "## Serving: decode throughput, in-process vs Triton",
        "",
        f"Written by `ckbd bench serving` ({len(images)} Kodak images, {size}, the shipped model; "
        "every decoder runs ONNX Runtime on one thread; clients are threads, gRPC for Triton; "
        "Triton is the server bundled in nvidia-pytriton, split = Python stand-ins for the stage models).",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs; "
        f"load average at start / end: {load[0]} / {load[1]}",
        "",
        "| configuration | clients | images/s | p50 latency (ms) | p99 latency (ms) |",
        "|---|---:|---:|---:|---:|",
        *(_row(m) for m in results),
        "",
        "Rows are measured one after another; on a shared machine the load changes between them, so compare "
        "rows only where the load average stayed level. In-process with 4 clients runs 4 decoders at once.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` in the hand-written part of ``path`` (after ckbd bench codecs' marker)."""
    from ckbd.tools.report.results_sections import write_section

    write_section(path, section, SECTION_BEGIN, SECTION_END)
