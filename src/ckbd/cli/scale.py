"""Where ``encode``/``decode`` do their per-file work: here, on a Triton server, or on a Ray cluster.

Every engine runs the command's own ``work(src, dst)`` (Ray ships it to its actors, where the codec
opens once per actor), and the local ``run_batch`` reports the results, so errors and output names
are the same whichever engine ran.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ckbd.errors import UsageError

Work = Callable[[Path, Path], dict[str, Any]]

ServerOption = typer.Option(None, "--server",
                            help="Run on a ckbd Triton server: host:port (HTTP) or grpc://host:port.")
ConcurrencyOption = typer.Option(4, "--concurrency", help="With --server: requests in flight at once.")
EngineOption = typer.Option("local", "--engine", help="local (this process) or ray (a Ray Data job).")
AddressOption = typer.Option(None, "--address",
                             help="With --engine ray: the cluster to join (default: a local one on 127.0.0.1).")


class CodecHandle:
    """An in-process codec opened where it is used: at once for a local run, in each Ray actor for a
    Ray job (it pickles as its recipe, so each actor loads the model once)."""

    def __init__(self, factory: Callable[[], Any], eager: bool) -> None:
        self._factory = factory
        self._codec = factory() if eager else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_factory", "_codec"):
            raise AttributeError(name)
        if self._codec is None:
            self._codec = self._factory()
        return getattr(self._codec, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"_factory": self._factory, "_codec": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def codec_handle(kind: str, factory: Callable[[], Any], server: str | None, engine: str) -> Any:
    """The codec ``work`` calls: a Triton client for ``--server``, else ``factory()``'s codec."""
    if server is None:
        return CodecHandle(factory, eager=engine != "ray")
    from ckbd.serving.client import TritonDecoder, TritonEncoder

    return TritonEncoder(server) if kind == "encode" else TritonDecoder(server)


def scaled_work(jobs: list[tuple[Path, Path]], work: Work, engine: str = "local", address: str | None = None,
                server: str | None = None, concurrency: int = 4) -> Work:
    """The ``work`` to hand ``run_batch``: computed by Ray, prefetched concurrently from a server, or ``work``."""
    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine '{engine}'; choose local or ray")
    if engine == "ray":
        if server is not None:
            raise UsageError("--engine ray and --server do not combine; choose one")
        from ckbd.serving.ray_batch import replay, run_ray

        return replay(run_ray(jobs, work, address))
    if address is not None:
        raise UsageError("--address needs --engine ray")
    if server is None:
        return work
    from ckbd.cli.parallel import parallel_work

    return parallel_work(jobs, work, max(1, concurrency))  # requests in flight at once
