"""The backend interface: load a graph, run it on named numpy arrays, report its I/O.

Loaders and runners are kept apart (as Polygraphy does): a :class:`Backend` turns a file into a
:class:`Runner` once, and the runner is reused for every image. ONNX Runtime, TensorRT and the
torch reference all implement this and nothing more, so the codec never knows which it drives.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ckbd.errors import CkbdError
from ckbd.runtime.stages import TensorSpec


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


class Backend(Protocol):
    """Turns a stage name plus a model directory into a :class:`Runner`."""

    name: str

    def load(self, model_dir: Path, stage: str) -> Runner: ...


BackendFactory = Callable[..., Backend]
_REGISTRY: dict[str, Callable[[], BackendFactory]] = {}


def register_backend(name: str, loader: Callable[[], BackendFactory]) -> None:
    """Register a backend by name; ``loader`` imports it lazily so optional deps stay optional."""
    _REGISTRY[name] = loader


def available_backends() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def create_backend(name: str, **options: object) -> Backend:
    """Instantiate a backend by name (``onnxruntime``, ``tensorrt``, ...)."""
    try:
        factory = _REGISTRY[name]()
    except KeyError:
        raise CkbdError(
            f"unknown backend '{name}'; choose one of: {', '.join(available_backends())}"
        ) from None
    return factory(**options)


def _onnxruntime() -> BackendFactory:
    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _tensorrt() -> BackendFactory:
    from ckbd.engines.trt_backend import TensorRTBackend

    return TensorRTBackend


register_backend("onnxruntime", _onnxruntime)
register_backend("tensorrt", _tensorrt)
