"""Where ``encode``/``decode`` run their files, decided once: one plan that opens the codecs and maps the work.

Placements:

- **here**, one file after another, one codec;
- **here, in N threads** (``--jobs N``): a codec per worker thread, each with ``threads / N`` intra-op threads and
  a 1/N share of the memory budget. ONNX Runtime, the range coder and Pillow release the GIL, so reading,
  the graphs, coding and writing of different files overlap; every file is coded exactly as in a sequential
  run, so outputs are byte-identical;
- **on a Triton server** (``--server``): Triton clients in place of codecs, ``--concurrency`` requests in flight;
- **on a Ray cluster** (``--engine ray``): the work is shipped to actors, each opening its codecs once.

Every placement runs the command's own ``work(codecs, src, dst)``; results come back in input order to the
local ``run_batch``, so the progress bar, the per-file errors and the output names are the same whichever ran.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import typer

from ckbd.errors import UsageError

T = TypeVar("T")
Work = Callable[[Path, Path], dict[str, Any]]
#: Opens the codec of a direction: ``"encode"`` or ``"decode"``.
Opener = Callable[[str], Any]

JobsOption = typer.Option(1, "--jobs", "-j", min=1,
                          help="Files coded at once, each worker with its own codec and a share of the threads.")
MaxMemoryOption = typer.Option(
    None, "--max-memory",
    help="Peak memory budget, e.g. 4G or 1500M (default: 1.5G per job, at most half the memory available "
         "now); images that do not fit whole are coded in tiles, at the same speed.")
ServerOption = typer.Option(None, "--server",
                            help="Run on a ckbd Triton server: host:port (HTTP) or grpc://host:port.")
ConcurrencyOption = typer.Option(4, "--concurrency", help="With --server: requests in flight at once.")
EngineOption = typer.Option("local", "--engine", help="local (this process) or ray (a Ray Data job).")
AddressOption = typer.Option(None, "--address",
                             help="With --engine ray: the cluster to join (default: a local one on 127.0.0.1).")


@dataclass(frozen=True)
class CodecOptions:
    """What encode and decode share about the codec: the model, where it runs, and its budgets."""

    model: Path | None = None
    backend: str = "onnxruntime"
    threads: int = 0
    precision: str = "fp32"
    device: str | None = None
    coder_threads: int = 0
    max_memory: str | None = None

    def __post_init__(self) -> None:
        from ckbd.cli.codec_options import backend_options

        backend_options(self.backend, self.device, self.precision)  # a bad combination fails before any work

    @property
    def is_checkpoint(self) -> bool:
        """A checkpoint file (torch backend) rather than an exported directory."""
        return self.model is not None and self.model.is_file()


@dataclass(frozen=True)
class Placement:
    """Where the files are coded (module docstring); a combination that cannot run is a usage error."""

    jobs: int = 1
    server: str | None = None
    concurrency: int = 4
    engine: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise UsageError(f"unknown engine '{self.engine}'; choose local or ray")
        if self.jobs > 1 and (self.server is not None or self.engine != "local"):
            raise UsageError("--jobs runs files in parallel on this machine; it does not combine with --server "
                             "or --engine ray (use --concurrency or the cluster's own parallelism)")
        if self.engine == "ray" and self.server is not None:
            raise UsageError("--engine ray and --server do not combine; choose one")
        if self.address is not None and self.engine != "ray":
            raise UsageError("--address needs --engine ray")

    @property
    def here(self) -> bool:
        """The codecs run in this process."""
        return self.server is None and self.engine == "local"


def thread_share(threads: int, jobs: int) -> int:
    """Threads per worker: a total (0: every core) split between ``jobs``."""
    if jobs <= 1:
        return threads
    return max(1, (threads or os.cpu_count() or 1) // jobs)


class RunPlan:
    """One run of encode or decode: its budget, its model package, how codecs open and where work runs."""

    def __init__(self, options: CodecOptions, placement: Placement) -> None:
        from ckbd.runtime.memory import MemoryBudget, parse_memory

        self.options, self.placement = options, placement
        self.budget = MemoryBudget(parse_memory(options.max_memory) if options.max_memory else None,
                                   share=max(1, placement.jobs))
        # Run here: the package is opened once, for every codec and for checks of each file's header.
        self.package = None
        if placement.here and not options.is_checkpoint:
            from ckbd.runtime.package import ModelPackage

            self.package = ModelPackage.open(options.model)

    def opener(self) -> Opener:
        """How a worker opens the codec of a direction: a local codec, or a Triton client with ``--server``."""
        server = self.placement.server
        if server is not None:
            from ckbd.serving.client import TritonDecoder, TritonEncoder

            return lambda kind: TritonEncoder(server) if kind == "encode" else TritonDecoder(server)
        o, jobs = self.options, self.placement.jobs
        source = self.package if self.package is not None else o.model
        threads, coder_threads = thread_share(o.threads, jobs), thread_share(o.coder_threads, jobs)
        budget = self.budget

        def open_local(kind: str) -> Any:
            from ckbd.cli.codec_options import open_codec
            from ckbd.runtime.codec import Decoder, Encoder

            return open_codec(Encoder if kind == "encode" else Decoder, source, o.backend, threads, o.precision,
                              budget, o.device, coder_threads=coder_threads)

        return open_local

    def map(self, pairs: list[tuple[Path, Path]], work: Callable[[T, Path, Path], dict[str, Any]],
            codecs: Callable[[Opener], T]) -> Work:
        """``work`` with its codecs (``codecs(opener)``, opened once per worker) over ``pairs``; returns the
        in-order waiter ``run_batch`` calls for each pair."""
        bound = BoundWork(work, codecs, self.opener())
        p = self.placement
        if p.engine == "ray":
            from ckbd.serving.ray_batch import replay, run_ray

            return replay(run_ray(pairs, bound, p.address))
        if p.jobs > 1:
            return _in_threads(pairs, bound, p.jobs)
        bound.open()  # a bad model, or a missing Triton client, is reported once, before the first file
        if p.server is not None:
            return _in_threads(pairs, bound, max(1, p.concurrency))  # requests in flight at once
        return bound


class BoundWork(Generic[T]):
    """``work`` with the codecs of the thread (or Ray actor) it runs in, opened there on first use.

    It pickles as its recipe (the work, the codecs' opener), so each Ray actor opens its own codecs once.
    """

    def __init__(self, work: Callable[[T, Path, Path], dict[str, Any]], codecs: Callable[[Opener], T],
                 opener: Opener) -> None:
        self.work, self.codecs, self.opener = work, codecs, opener
        self._local = threading.local()

    def open(self) -> T:
        found: T | None = getattr(self._local, "codecs", None)
        if found is None:
            found = self._local.codecs = self.codecs(self.opener)
        return found

    def __call__(self, src: Path, dst: Path) -> dict[str, Any]:
        return self.work(self.open(), src, dst)

    def __getstate__(self) -> dict[str, Any]:
        return {"work": self.work, "codecs": self.codecs, "opener": self.opener}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _in_threads(pairs: list[tuple[Path, Path]], work: Work, workers: int) -> Work:
    """``work`` run by ``workers`` threads, every pair submitted now; returns the in-order waiter."""
    if len(pairs) < 2:
        return work
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckbd-job")
    futures: dict[tuple[Path, Path], Future[dict[str, Any]]] = {pair: pool.submit(work, *pair) for pair in pairs}
    pool.shutdown(wait=False)

    def result(src: Path, dst: Path) -> dict[str, Any]:
        return futures[(src, dst)].result()

    return result
