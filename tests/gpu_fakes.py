"""Stand-ins for a CUDA binding and a TensorRT engine, shared by the GPU-path tests.

:class:`FakeCuda` keeps device memory in host bytearrays and counts every call; :class:`FakeEngine`
plays an ``anchor_params`` engine through TensorRT's name-based API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ckbd.engines.cuda_memory import CudaApi, DeviceProperties, PinnedMemory
from ckbd.runtime.entropy_tables import gaussian_tables


def write_tables(folder: Any, N: int, scale_table: list[float]) -> None:
    """Real entropy tables for a fake model directory: opening a model package checks them
    against the manifest's N and scale table."""
    gaussian_tables(np.asarray(scale_table)).save(folder / "y_tables.npz")
    gaussian_tables(np.ones(N)).save(folder / "z_tables.npz")


class FakeCuda(CudaApi):
    """Device memory in host bytearrays; copies run immediately; everything is counted."""

    name = "fake"

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.host_live = 0
        self.next_ptr = 0x1000
        self.htod = 0
        self.dtoh = 0
        self.syncs = 0
        self.closed = False

    def activate(self) -> None:
        pass

    def device_properties(self) -> DeviceProperties:
        return DeviceProperties("Fake GPU", (9, 0))

    def device_alloc(self, nbytes: int) -> int:
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 0x1000
        self.memory[ptr] = bytearray(nbytes)
        return ptr

    def device_free(self, ptr: int) -> None:
        del self.memory[ptr]

    def host_alloc(self, nbytes: int) -> PinnedMemory:
        self.host_live += 1

        def release() -> None:
            self.host_live -= 1

        return PinnedMemory(np.zeros(nbytes, np.uint8), release)

    def create_stream(self) -> int:
        return 7

    def destroy_stream(self, stream: int) -> None:
        pass

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        assert stream == 7 and src.flags.c_contiguous
        self.memory[dst][: src.nbytes] = src.tobytes()
        self.htod += 1

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        assert stream == 7
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.memory[src], np.uint8, dst.nbytes)
        self.dtoh += 1

    def synchronize(self, stream: int) -> None:
        self.syncs += 1

    def close(self) -> None:
        self.closed = True

    def array(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self.memory[ptr], dtype, count).reshape(shape)

    def write(self, ptr: int, array: np.ndarray) -> None:
        self.memory[ptr][: array.nbytes] = np.ascontiguousarray(array).tobytes()


class FakeContext:
    """Plays anchor_params: indexes = int32(hyper[:, :M, :, ::2]), means = hyper[:, M:, :, ::2]."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profile
        if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        _, channels, h, w = self.shapes["hyper"]
        return (1, channels // 2, h, w // 2)

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.cuda
        hyper = cuda.array(self.addresses["hyper"], self.shapes["hyper"], np.float32)
        half = hyper.shape[1] // 2
        cuda.write(self.addresses["anchor_indexes"], hyper[:, :half, :, ::2].astype(np.int32))
        cuda.write(self.addresses["anchor_means"], hyper[:, half:, :, ::2])
        return True


class FakeEngine:
    IO = {
        "hyper": (1, np.float32),
        "anchor_indexes": (2, np.int32),
        "anchor_means": (2, np.float32),
    }

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.profile = ((1, 4, 1, 2), (1, 4, 4, 4), (1, 4, 8, 8))

    @property
    def num_io_tensors(self) -> int:
        return len(self.IO)

    def get_tensor_name(self, index: int) -> str:
        return list(self.IO)[index]

    def get_tensor_mode(self, name: str) -> int:
        return self.IO[name][0]

    def get_tensor_dtype(self, name: str) -> Any:
        return self.IO[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (1, 4, -1, -1) if name == "hyper" else (1, 2, -1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return self.profile

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


def patch_tensorrt(monkeypatch: Any, cuda: FakeCuda, deserialize: Any) -> Any:
    """Install a fake ``tensorrt`` whose runtime deserialises with ``deserialize(data)`` and point the
    TensorRT backend module at ``cuda``; returns that module (its ``TensorRTBackend`` is ready to use)."""
    import sys
    import types

    fake_trt = types.SimpleNamespace(
        TensorIOMode=types.SimpleNamespace(INPUT=1, OUTPUT=2), nptype=lambda dtype: dtype,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    import ckbd.engines.trt_backend as module

    monkeypatch.setattr(module, "ensure_tensorrt", lambda purpose: None)
    monkeypatch.setattr(module, "tensorrt_logger", lambda: None)
    monkeypatch.setattr(module, "tensorrt_version", lambda: "10.13.0.35")
    monkeypatch.setattr(module, "open_cuda", lambda device: cuda)
    return module


def fake_cuda_onnxruntime(monkeypatch: Any, perturb: tuple[str, ...] = (),
                          identity: dict[str, str] | None = None) -> Any:
    """Make ONNX Runtime look like onnxruntime-gpu on a fake GPU; returns the session class.

    A session asked for the CUDA provider really runs on the CPU provider but reports CUDA; the
    outputs of the stages in ``perturb`` come back with one value off by one (a kernel that is not
    exact). ``identity`` is what the CUDA driver reports (None: nothing can be read, no caching).
    """
    from pathlib import Path

    import onnxruntime

    import ckbd.runtime.ort_backend as ort_backend

    real = onnxruntime.InferenceSession
    cuda, cpu = ort_backend.CUDA_PROVIDER, ort_backend.CPU_PROVIDER

    class FakeCudaSession:
        created: list[FakeCudaSession] = []
        cuda_runs = 0

        def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
            self.requested = list(providers or [cpu])
            self.on_cuda = any(isinstance(p, tuple) and p[0] == cuda for p in self.requested)
            self.stage = Path(path).name.split(".")[0]
            self.inner = real(path, sess_options=sess_options, providers=[cpu])
            FakeCudaSession.created.append(self)

        def get_providers(self) -> list[str]:
            return [cuda, cpu] if self.on_cuda else [cpu]

        def get_inputs(self) -> Any:
            return self.inner.get_inputs()

        def get_outputs(self) -> Any:
            return self.inner.get_outputs()

        def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
            out = self.inner.run(names, feeds)
            if self.on_cuda:
                FakeCudaSession.cuda_runs += 1
                if self.stage in perturb:
                    out[0] = out[0].copy()
                    out[0].flat[0] += 1
            return out

    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeCudaSession)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [cuda, cpu])
    monkeypatch.setattr(ort_backend, "cuda_identity", lambda device_id: identity)
    return FakeCudaSession
