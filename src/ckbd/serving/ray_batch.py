"""Running an encode/decode batch as a Ray Data job.

The CLI hands over its per-file ``work(src, dst)`` (reading, coding, naming, atomic writing: the
local run's own code); it pickles with a recipe for its codec, which each actor opens once. Results and per-file errors come back to the driver, which reports them
exactly as a local run does. Outputs are written by the actors, so on a multi-node cluster the paths
must be on storage every node sees.

Without an address a local cluster is started on loopback only (no dashboard, no Ray Serve).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckbd.errors import CkbdError, require

Work = Callable[[Path, Path], dict[str, Any]]
#: (src, dst) -> the work's row, or the one-line error it raised.
Outcome = dict[tuple[Path, Path], dict[str, Any] | str]


class _Actor:
    """One model per actor, reused for every file it is given."""

    def __init__(self, work: Work) -> None:
        self.work = work

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: list[str] = []
        errors: list[str] = []
        for src, dst in zip(batch["src"], batch["dst"]):
            try:
                rows.append(json.dumps(self.work(Path(src), Path(dst))))
                errors.append("")
            except CkbdError as exc:
                rows.append("")
                errors.append(str(exc) or type(exc).__name__)
            except MemoryError:
                rows.append("")
                errors.append("out of memory: an allocation failed, nothing was written")
        return {"index": list(batch["index"]), "row": rows, "error": errors}


def run_ray(jobs: list[tuple[Path, Path]], work: Work, address: str | None = None,
            workers: int | None = None) -> Outcome:
    """Run ``work`` over ``jobs`` on Ray actors; returns every job's row or error."""
    if not jobs:
        return {}
    ray = require("ray", "batch", "--engine ray")
    data = require("ray.data", "batch", "--engine ray")
    started = _connect(ray, address, workers)
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-job INFO lines; errors still show
        data.DataContext.get_current().enable_progress_bars = False
        size = workers or max(1, min(len(jobs), int(ray.cluster_resources().get("CPU", 1))))
        items = [{"index": i, "src": str(src), "dst": str(dst)} for i, (src, dst) in enumerate(jobs)]
        dataset = data.from_items(items).map_batches(
            _Actor, fn_constructor_args=(work,), batch_size=1, num_cpus=1,
            compute=data.ActorPoolStrategy(size=size))
        outcome: Outcome = {}
        for result in dataset.iter_rows():
            job = jobs[int(result["index"])]
            outcome[job] = json.loads(result["row"]) if not result["error"] else str(result["error"])
    except ray.exceptions.RaySystemError as exc:
        raise CkbdError(f"Ray failed: {str(exc).splitlines()[0]}") from None
    finally:
        if started:
            ray.shutdown()
    return outcome


def _connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """Join ``address``, or start a loopback-only local cluster; True when this call started Ray."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise CkbdError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=workers or os.cpu_count() or 1, _node_ip_address="127.0.0.1", **quiet)
    return True


def replay(outcome: Outcome) -> Work:
    """A ``work`` that returns the job's result from ``outcome`` (or raises its error), for ``run_batch``."""
    def work(src: Path, dst: Path) -> dict[str, Any]:
        result = outcome.get((src, dst), "was not processed by the Ray job")
        if isinstance(result, str):
            raise CkbdError(result)
        return result

    return work
