"""Device memory, pinned host memory and streams behind one small interface.

TensorRT only needs raw device pointers and a stream handle, so the CUDA binding is an
implementation detail: :class:`CudaApi` lists the dozen calls the engines make, implemented with
NVIDIA's cuda-python (``cuda.bindings.runtime``) and, as a fallback, pycuda. On top of it,
:class:`HostDeviceBuffer` keeps one device buffer per tensor, plus a pinned host twin only once the
tensor is uploaded or downloaded (outputs kept on the device never need one), grown on demand and
reused, so a steady stream of same-sized images allocates nothing. That layer is plain Python and
is tested with a fake :class:`CudaApi`.
"""

from __future__ import annotations

import ctypes
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckbd.errors import CkbdError, MissingDependencyError

#: Allocations are rounded up to this so that small shape changes do not reallocate.
ALIGNMENT = 256


@dataclass(frozen=True)
class DeviceProperties:
    name: str
    compute_capability: tuple[int, int]

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass
class PinnedMemory:
    """Page-locked host memory as a flat ``uint8`` array, plus how to give it back."""

    array: np.ndarray
    release: Callable[[], None]


class CudaApi(ABC):
    """The CUDA calls the engines make; pointers and stream handles are plain ints."""

    name: str = "cuda"

    @abstractmethod
    def activate(self) -> None:
        """Make this API's device current on the calling thread."""

    @abstractmethod
    def device_properties(self) -> DeviceProperties: ...

    @abstractmethod
    def device_alloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def device_free(self, ptr: int) -> None: ...

    @abstractmethod
    def host_alloc(self, nbytes: int) -> PinnedMemory: ...

    @abstractmethod
    def create_stream(self) -> int: ...

    @abstractmethod
    def destroy_stream(self, stream: int) -> None: ...

    @abstractmethod
    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        """Copy a C-contiguous host array to device memory; ``src`` must stay alive until sync."""

    @abstractmethod
    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        """Copy device memory into a C-contiguous host array (pinned for a true async copy)."""

    @abstractmethod
    def synchronize(self, stream: int) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Undo what opening did to the calling thread's CUDA state (idempotent)."""

    def __enter__(self) -> CudaApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _round_up(nbytes: int) -> int:
    return max(ALIGNMENT, -(-nbytes // ALIGNMENT) * ALIGNMENT)


class DeviceBuffer:
    """A device allocation that only grows: asking for fewer bytes reuses it."""

    def __init__(self, api: CudaApi) -> None:
        self._api = api
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; True when this had to (re)allocate."""
        if nbytes <= self.capacity:
            return False
        self.free()
        size = _round_up(nbytes)
        self.ptr = self._api.device_alloc(size)
        self.capacity = size
        return True

    def free(self) -> None:
        if self.ptr:
            self._api.device_free(self.ptr)
        self.ptr, self.capacity = 0, 0


class PinnedBuffer:
    """A pinned host allocation that only grows, viewed as any shape and dtype that fits."""

    def __init__(self, api: CudaApi) -> None:
        self._api = api
        self._memory: PinnedMemory | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._memory is None else int(self._memory.array.nbytes)

    def ensure(self, nbytes: int) -> bool:
        if nbytes <= self.capacity:
            return False
        self.free()
        self._memory = self._api.host_alloc(_round_up(nbytes))
        return True

    def view(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """The first bytes of the buffer as an array; valid until the buffer grows."""
        if self._memory is None:
            raise CkbdError("pinned buffer used before allocation")
        count = int(np.prod(shape, dtype=np.int64))
        flat = self._memory.array[: count * dtype.itemsize].view(dtype)
        return flat.reshape(shape)

    def free(self) -> None:
        if self._memory is not None:
            self._memory.release()
        self._memory = None


class HostDeviceBuffer:
    """One tensor's device buffer and, once it is copied to or from the host, its pinned twin.

    ``generation`` changes whenever the device contents are replaced or the memory moves, so a
    :class:`~ckbd.runtime.backend.DeviceTensor` pointing here can tell it has gone stale.
    """

    def __init__(self, api: CudaApi, name: str) -> None:
        self.name = name
        self.device = DeviceBuffer(api)
        self.host = PinnedBuffer(api)
        self._api = api
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype[Any] = np.dtype(np.float32)
        self.generation = 0

    @property
    def ptr(self) -> int:
        return self.device.ptr

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
        """Set the tensor's shape and type, growing device memory if needed; True when it did."""
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        grew = self.device.ensure(self.nbytes)
        self.generation += 1
        return grew

    def upload(self, array: np.ndarray, stream: int) -> None:
        """Stage ``array`` in pinned memory and enqueue its copy to the device.

        The caller makes sure no earlier copy from the pinned twin is still in flight.
        """
        self.reserve(array.shape, array.dtype)
        self.host.ensure(self.nbytes)
        staged = self.host_view()
        np.copyto(staged, array, casting="no")
        self._api.copy_htod_async(self.device.ptr, staged, stream)

    def enqueue_download(self, stream: int) -> None:
        """Enqueue the copy of the device contents into the pinned twin (read after sync)."""
        self.host.ensure(self.nbytes)
        self._api.copy_dtoh_async(self.host_view(), self.device.ptr, stream)

    def host_view(self) -> np.ndarray:
        return self.host.view(self.shape, self.dtype)

    def free(self) -> None:
        self.device.free()
        self.host.free()
        self.generation += 1


# --- cuda-python -----------------------------------------------------------------------------


def _import_cudart() -> Any:
    """cuda-python's runtime: ``cuda.bindings.runtime`` (12.6+), else the legacy ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")


class CudaPythonApi(CudaApi):
    """The CUDA runtime through NVIDIA's cuda-python bindings (the primary implementation)."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        self._rt = _import_cudart()
        self._device = device
        self.activate()

    def _check(self, result: Any, what: str) -> Any:
        """cuda-python returns ``(error, *values)``; raise on error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            _, text = self._rt.cudaGetErrorString(err)
            message = text.decode() if isinstance(text, bytes) else str(text)
            raise CkbdError(f"CUDA {what} failed on device {self._device}: {message}")
        return values[0] if len(values) == 1 else tuple(values)

    def activate(self) -> None:
        self._check(self._rt.cudaSetDevice(self._device), "cudaSetDevice")

    def device_properties(self) -> DeviceProperties:
        props = self._check(self._rt.cudaGetDeviceProperties(self._device), "device query")
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return DeviceProperties(name, (int(props.major), int(props.minor)))

    def device_alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def device_free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> PinnedMemory:
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        array = np.ctypeslib.as_array(raw)

        def release() -> None:
            self._check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

        return PinnedMemory(array, release)

    def create_stream(self) -> int:
        flags = self._rt.cudaStreamNonBlocking
        return int(self._check(self._rt.cudaStreamCreateWithFlags(flags), "stream creation"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "stream destruction")

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        host = src.ctypes.data
        self._check(self._rt.cudaMemcpyAsync(dst, host, src.nbytes, kind, stream), "copy to device")

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = dst.ctypes.data
        self._check(self._rt.cudaMemcpyAsync(host, src, dst.nbytes, kind, stream), "copy to host")

    def synchronize(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "stream synchronize")

    def close(self) -> None:
        """Nothing to undo: the runtime API uses the primary context and pushes none."""


def open_cuda(device: int = 0, prefer: str | None = None) -> CudaApi:
    """The CUDA API for ``device``: cuda-python if installed, else pycuda.

    Raises :class:`MissingDependencyError` (extra ``gpu``) when neither binding is installed and
    :class:`CkbdError` when one is but no usable GPU or driver is found.
    """
    order: tuple[str, ...] = ("cuda-python", "pycuda")
    if prefer is not None:
        order = (prefer, *(name for name in order if name != prefer))
    for name in order:
        try:
            if name == "cuda-python":
                return CudaPythonApi(device)
            from ckbd.engines.pycuda_api import PyCudaApi

            return PyCudaApi(device)
        except ImportError:
            continue
    raise MissingDependencyError("cuda-python", "gpu", "GPU buffers for TensorRT")
