"""Where a benchmark ran: stored next to every benchmark's numbers, so figures from different machines
are never compared unknowingly."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np


def _cpu_model() -> str:
    """A readable CPU name (``platform.processor()`` is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran, stored next to its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        constriction_version = version("constriction")
    except PackageNotFoundError:
        constriction_version = "unknown"
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "constriction": constriction_version,
    }
