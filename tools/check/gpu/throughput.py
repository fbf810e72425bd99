"""Images per second over a batch of streams: one after another, and pipelined.

Both run in worker threads (one, then ``workers``). Pipelined: ``workers`` threads, each with its own decoder (its own copy of the model) and, on
CUDA, its own stream, take the next file as soon as they are free. torch releases the GIL while it
queues and waits on kernels and the range coder releases it while it codes, so the coding of one
image overlaps the device work of another. Every decode is checked by the stream's symbol checksum.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ckbd.tools.check.gpu.compare import one_line

WORKERS = 2


def _stream_scope(device: str) -> Callable[[], AbstractContextManager[Any]]:
    """A per-thread CUDA stream context on CUDA; nothing on the CPU."""
    import torch

    if not device.startswith("cuda"):
        return nullcontext
    local = threading.local()

    def scope() -> AbstractContextManager[Any]:
        if not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(torch.device(device))
        return torch.cuda.stream(local.stream)

    return scope


def run_throughput(name: str, streams: Sequence[bytes], open_decoder: Callable[[], Any], device: str,
                   workers: int = WORKERS) -> dict[str, Any]:
    """Images/s of ``streams`` decoded by one worker thread (one after another) and by ``workers``."""
    row: dict[str, Any] = {"model": name, "images": len(streams), "workers": workers}
    try:
        with open_decoder() as decoder:
            warm = _one_per_size(decoder, streams)
        # Both in worker threads: a thread's torch CPU thread pool differs from the main thread's.
        row["sequential_images_per_s"] = round(_images_per_s(streams, warm, open_decoder, device, 1), 3)
        row["pipelined_images_per_s"] = round(_images_per_s(streams, warm, open_decoder, device, workers), 3)
    except Exception as exc:  # one failed model is a row, not the end of the check
        row["error"] = one_line(exc)
    return row


def _one_per_size(decoder: Any, streams: Sequence[bytes]) -> list[bytes]:
    """The first stream of each image size (a new shape costs a first run, which is no throughput)."""
    first: dict[tuple[int, int], bytes] = {}
    for data in streams:
        header = decoder.read_header(data).header
        first.setdefault((header.height, header.width), data)
    return list(first.values())


def _images_per_s(streams: Sequence[bytes], warm: Sequence[bytes], open_decoder: Callable[[], Any], device: str,
                  workers: int) -> float:
    """``workers`` threads, each opening its decoder and decoding ``warm`` untimed, then all of ``streams``."""
    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()
    scope = _stream_scope(device)

    def decoder() -> Any:
        if not hasattr(local, "decoder"):
            local.decoder = open_decoder()
            with lock:
                opened.append(local.decoder)
        return local.decoder

    barrier = threading.Barrier(workers)

    def warm_up(_: int) -> None:  # the barrier makes each worker thread take one warm-up
        try:
            with scope():
                for data in warm:
                    decoder().decode(data)
        finally:
            barrier.wait(timeout=600)

    def decode(data: bytes) -> None:
        with scope():
            decoder().decode(data)

    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(warm_up, range(workers)))
            start = time.perf_counter()
            list(pool.map(decode, streams))
            return len(streams) / (time.perf_counter() - start)
    finally:
        for d in opened:
            d.close()
