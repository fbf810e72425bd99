"""TensorRT engines for the five stage graphs: build them from ONNX, check them, run them.

Nothing here imports ``tensorrt`` or a CUDA binding at module import time: they are optional
(the ``gpu`` extra), so every entry point calls :func:`ensure_tensorrt` before touching them.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING

from ckbd.errors import MissingDependencyError, require

if TYPE_CHECKING:
    import tensorrt as trt

#: The extra that installs TensorRT and the CUDA bindings.
GPU_EXTRA = "gpu"

_logger: trt.ILogger | None = None
_recent_errors: deque[str] = deque(maxlen=50)


def ensure_tensorrt(purpose: str) -> None:
    """Fail with a message naming the ``gpu`` extra unless the real TensorRT package imports.

    ``tensorrt-stubs`` installs a bare ``tensorrt/`` folder of ``.pyi`` files, which Python
    imports as an empty namespace package; that must count as "not installed" too.
    """
    module = require("tensorrt", GPU_EXTRA, purpose)
    if not hasattr(module, "Builder"):
        sys.modules.pop("tensorrt", None)
        raise MissingDependencyError("tensorrt", GPU_EXTRA, purpose)


def tensorrt_version() -> str:
    """The running TensorRT's version string, e.g. ``10.13.0.35``."""
    import tensorrt as trt

    return str(trt.__version__)


def tensorrt_logger() -> trt.ILogger:
    """The one logger shared by every builder and runtime of this process.

    TensorRT warns when several loggers are used; this one also remembers recent errors so a
    failed build can say why instead of pointing at a scrolled-away log.
    """
    global _logger
    if _logger is None:
        _logger = _make_logger()
    return _logger


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (the stubs declare it indexable, not iterable)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def recent_errors(clear: bool = True) -> list[str]:
    """Errors TensorRT logged since the last call (oldest first)."""
    errors = list(_recent_errors)
    if clear:
        _recent_errors.clear()
    return errors


def _make_logger() -> trt.ILogger:
    import tensorrt as trt

    class _CkbdLogger(trt.ILogger):
        """Prints warnings and errors to stderr and keeps errors for the exception message."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                _recent_errors.append(msg)
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT] {severity.name}: {msg}", file=sys.stderr)

    return _CkbdLogger()
