"""The backend interface: load a graph, run it on named numpy arrays, report its I/O.

Loaders and runners are kept apart (as Polygraphy does): a :class:`Backend` turns one stage of an
opened model package into a :class:`Runner` once, and the runner is reused for every image. ONNX
Runtime, TensorRT and the torch reference all implement this and nothing more, are created by name
from one registry (their modules imported only then), and free what they hold on ``close()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from ckbd.errors import CkbdError, require
from ckbd.runtime.stages import TensorSpec

if TYPE_CHECKING:
    from ckbd.runtime.package import ModelPackage


@runtime_checkable
class DeviceTensor(Protocol):
    """An output left in accelerator memory so the next stage can read it without a round trip."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def to_host(self) -> np.ndarray: ...


Tensor = np.ndarray | DeviceTensor


def to_host(tensor: Tensor) -> np.ndarray:
    """Host copy of a stage output, whichever backend produced it."""
    return tensor if isinstance(tensor, np.ndarray) else tensor.to_host()


@runtime_checkable
class Runner(Protocol):
    """One loaded graph, ready to run repeatedly."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Run one inference.

        ``feeds`` are host arrays or device tensors returned by an earlier run of the same backend.
        Outputs named in ``keep`` may stay on the device (a :class:`DeviceTensor`); every other
        output comes back as a host array. Host-only backends ignore ``keep``.
        """
        ...

    def close(self) -> None:
        """Release the graph and its buffers; running afterwards is an error."""
        ...


class Backend(Protocol):
    """Turns one stage of a :class:`~ckbd.runtime.package.ModelPackage` into a :class:`Runner`.

    A backend owns what its runners share (sessions, a CUDA stream, device memory); ``close()``
    frees all of it, and ``with backend:`` closes on exit.
    """

    name: str

    def load(self, package: ModelPackage, stage: str) -> Runner: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


class ClosingBackend:
    """Mixin: ``close()`` closes every runner handed out, and the backend works as a context manager."""

    _runners: list[Runner]

    def _handed_out(self, runner: R) -> R:
        self._runners.append(runner)
        return runner

    def close(self) -> None:
        while self._runners:
            self._runners.pop().close()

    def __enter__(self: B) -> B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


R = TypeVar("R", bound=Runner)
B = TypeVar("B", bound=ClosingBackend)
BackendFactory = Callable[..., Backend]


@dataclass(frozen=True)
class _Registered:
    module: str
    cls: str
    #: The pip extra that installs what the backend imports (None: always installed).
    extra: str | None
    purpose: str


_REGISTRY: dict[str, _Registered] = {}


def register_backend(name: str, module: str, cls: str, extra: str | None = None) -> None:
    """Register a backend by the class that implements it; the module is imported only when the
    backend is created, so an optional dependency stays optional."""
    _REGISTRY[name] = _Registered(module, cls, extra, f"the {name} backend")


def available_backends() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def create_backend(name: str, **options: object) -> Backend:
    """Instantiate a backend by name (``onnxruntime``, ``tensorrt``, ``torch``)."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise CkbdError(
            f"unknown backend '{name}'; choose one of: {', '.join(available_backends())}"
        ) from None
    if entry.extra is None:
        module = importlib.import_module(entry.module)
    else:
        module = require(entry.module, entry.extra, entry.purpose)
    factory: BackendFactory = getattr(module, entry.cls)
    return factory(**options)


register_backend("onnxruntime", "ckbd.runtime.ort_backend", "OnnxRuntimeBackend")
register_backend("tensorrt", "ckbd.engines.trt_backend", "TensorRTBackend", extra="gpu")
register_backend("torch", "ckbd.export.torch_backend", "TorchBackend", extra="export")
