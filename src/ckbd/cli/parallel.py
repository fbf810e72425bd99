"""``--jobs N`` and ``--max-memory`` for ``encode``/``decode``: files in parallel, inside a memory budget.

Each of the N workers is a thread with its own codec (its own ONNX Runtime sessions, so their
thread pools never contend) running ``threads / N`` intra-op threads; ONNX Runtime, the range
coder's numpy work and Pillow's PNG codec release the GIL, so reading, the graphs, range coding
and writing of different files overlap. Every file is coded exactly as in a sequential run (same
graphs, same schedule), so the outputs are byte-identical; results are reported in input order,
so the progress bar and the per-file errors read as before. The memory budget is shared equally
between the workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import typer

from ckbd.errors import UsageError

Work = Callable[[Path, Path], dict[str, Any]]

JobsOption = typer.Option(1, "--jobs", "-j", min=1,
                          help="Files coded at once, each worker with its own codec and a share of the threads.")
MaxMemoryOption = typer.Option(
    None, "--max-memory",
    help="Peak memory budget, e.g. 4G or 1500M (default: 1.5G per job, at most half the memory available "
         "now); images that do not fit whole are coded in tiles, at the same speed.")


def thread_share(threads: int, jobs: int) -> int:
    """Intra-op threads per worker: the ``--threads`` total (0: every core) split between ``jobs``."""
    if jobs <= 1:
        return threads
    return max(1, (threads or os.cpu_count() or 1) // jobs)


def memory_budget(max_memory: str | None, jobs: int) -> Any:
    """The budget of each worker (a ``MemoryBudget``); a malformed size is a usage error."""
    from ckbd.runtime.memory import MemoryBudget, parse_memory

    return MemoryBudget(parse_memory(max_memory) if max_memory else None, share=max(1, jobs))


class PerThreadCodec:
    """A codec per worker thread, opened on first use there; attributes are the thread's codec's."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_factory", "_local"):
            raise AttributeError(name)
        codec = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = self._factory()
        return getattr(codec, name)


def per_worker(factory: Callable[[], Any], jobs: int) -> Callable[[], Any]:
    """``factory`` itself for one job, else a factory of a :class:`PerThreadCodec`."""
    return factory if jobs <= 1 else (lambda: PerThreadCodec(factory))


def check_jobs(jobs: int, server: str | None, engine: str) -> None:
    """``--jobs`` is for local runs; refused (before any work) with ``--server`` or ``--engine ray``."""
    if jobs > 1 and (server is not None or engine != "local"):
        raise UsageError("--jobs runs files in parallel on this machine; it does not combine with --server "
                         "or --engine ray (use --concurrency or the cluster's own parallelism)")


def parallel_work(pairs: list[tuple[Path, Path]], work: Work, jobs: int) -> Work:
    """``work`` run by ``jobs`` threads, all files submitted now; returns the in-order waiter."""
    if jobs <= 1 or len(pairs) < 2:
        return work
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ckbd-job")
    futures: dict[tuple[Path, Path], Future[dict[str, Any]]] = {pair: pool.submit(work, *pair) for pair in pairs}
    pool.shutdown(wait=False)

    def result(src: Path, dst: Path) -> dict[str, Any]:
        return futures[(src, dst)].result()

    return result
