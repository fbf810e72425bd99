"""The :class:`~ckbd.engines.cuda_memory.CudaApi` calls through pycuda, for machines without cuda-python.

TensorRT uses the CUDA runtime, which works in the device's *primary* context, so this retains and
pushes that context rather than creating its own (as ``pycuda.autoinit`` would), and pops exactly
its own pushes again.
"""

from __future__ import annotations

import importlib
import weakref
from typing import Any

import numpy as np

from ckbd.engines.cuda_memory import CudaApi, DeviceProperties, PinnedMemory
from ckbd.errors import CkbdError


class _ContextPushes:
    """The pushes one :class:`PyCudaApi` made of its context, so exactly those are popped again.

    pycuda aborts the process at exit (SIGABRT, hiding the exit code) when its context stack is
    not empty, so every push must be matched; this object holds no reference to the API so that
    it can still pop when an unclosed API is garbage-collected or the interpreter exits.
    """

    def __init__(self, cuda: Any, context: Any) -> None:
        self._cuda = cuda
        self._context = context
        self.count = 0

    def make_current(self) -> None:
        if self._cuda.Context.get_current() != self._context:
            self._context.push()
            self.count += 1

    def pop_all(self) -> None:
        """Pop our pushes while our context is on top (never a context someone else pushed)."""
        while self.count and self._cuda.Context.get_current() == self._context:
            self._cuda.Context.pop()
            self.count -= 1


class PyCudaApi(CudaApi):
    """The same calls through pycuda, for machines that have it but not cuda-python.

    TensorRT uses the CUDA runtime, which works in the device's *primary* context, so this
    retains and pushes that context rather than creating its own (as ``pycuda.autoinit`` would),
    and pops it again on :meth:`close` (or at exit).
    """

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        self._cuda: Any = importlib.import_module("pycuda.driver")
        self._device_index = device
        try:
            self._cuda.init()
            self._device = self._cuda.Device(device)
            self._pushes = _ContextPushes(self._cuda, self._device.retain_primary_context())
            self._pushes.make_current()
        except self._cuda.Error as exc:
            raise CkbdError(f"CUDA device {device} is not usable: {exc}") from None
        self._finalizer = weakref.finalize(self, self._pushes.pop_all)
        self._allocations: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def activate(self) -> None:
        self._pushes.make_current()

    def close(self) -> None:
        self._finalizer()

    def device_properties(self) -> DeviceProperties:
        major, minor = self._device.compute_capability()
        return DeviceProperties(str(self._device.name()), (int(major), int(minor)))

    def device_alloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def device_free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def host_alloc(self, nbytes: int) -> PinnedMemory:
        array = self._cuda.pagelocked_empty(nbytes, np.uint8)
        return PinnedMemory(array, array.base.free)

    def create_stream(self) -> int:
        stream = self._cuda.Stream()
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._cuda.memcpy_htod_async(dst, src, self._streams[stream])

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._cuda.memcpy_dtoh_async(dst, src, self._streams[stream])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()
