"""The TensorRT runner and backend on fakes: no TensorRT or GPU needed.

The CUDA binding's error without a GPU, the host/device buffer layer on a fake CUDA API, the
runner's binding logic on a fake engine, and the backend's engine loading and refusals with a
stand-in ``tensorrt`` module.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_fixtures import fake_model_dir, install_engine
from gpu_fakes import FakeCuda, FakeEngine, patch_tensorrt

from ckbd.engines.cuda_memory import HostDeviceBuffer
from ckbd.errors import CkbdError, MissingDependencyError, ModelError, ModelMismatchError
from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return fake_model_dir(tmp_path)


# --- the CUDA binding without a GPU ----------------------------------------------------------


def test_cuda_python_without_a_gpu_is_a_clear_error() -> None:
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from ckbd.engines.cuda_memory import open_cuda

    try:
        api = open_cuda(0)
    except MissingDependencyError:  # pragma: no cover - cuda-python is importable here
        raise
    except CkbdError as exc:
        assert "CUDA" in str(exc)
    else:  # a machine with a GPU
        assert api.device_properties().name


# --- the buffer layer on a fake CUDA API -----------------------------------------------------


def test_buffer_grows_only_when_needed() -> None:
    cuda = FakeCuda()
    buffer = HostDeviceBuffer(cuda, "x")
    assert buffer.reserve((1, 4, 8, 8), np.dtype(np.float32))
    first = buffer.ptr
    assert not buffer.reserve((1, 4, 4, 4), np.dtype(np.float32))  # smaller: reused
    assert not buffer.reserve((1, 4, 8, 8), np.dtype(np.float32))
    assert buffer.ptr == first and len(cuda.memory) == 1
    assert cuda.host_live == 0  # no pinned twin until something is copied to or from the host
    buffer.enqueue_download(stream=7)
    assert cuda.host_live == 1
    assert buffer.reserve((1, 4, 16, 16), np.dtype(np.float32))  # larger: reallocated once
    buffer.enqueue_download(stream=7)
    assert len(cuda.memory) == 1 and cuda.host_live == 1
    buffer.free()
    assert not cuda.memory and cuda.host_live == 0


def test_buffer_round_trip_and_generation() -> None:
    cuda = FakeCuda()
    buffer = HostDeviceBuffer(cuda, "x")
    data = np.arange(24, dtype=np.int32).reshape(1, 2, 3, 4)
    buffer.upload(data, stream=7)
    generation = buffer.generation
    np.testing.assert_array_equal(cuda.array(buffer.ptr, data.shape, np.int32), data)
    cuda.write(buffer.ptr, data * 2)
    buffer.enqueue_download(stream=7)
    np.testing.assert_array_equal(buffer.host_view(), data * 2)
    buffer.reserve(data.shape, np.dtype(np.int32))
    assert buffer.generation != generation


# --- the runner on a fake engine -------------------------------------------------------------


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeCuda, Any]]:
    """A TensorRTRunner around FakeEngine, with a stand-in ``tensorrt`` for its two lookups."""
    fake_trt = types.SimpleNamespace(
        TensorIOMode=types.SimpleNamespace(INPUT=1, OUTPUT=2), nptype=lambda dtype: dtype
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    from ckbd.engines.trt_backend import TensorRTRunner, _Session

    cuda = FakeCuda()
    session = _Session(cuda, cuda.create_stream())
    runner = TensorRTRunner(
        FakeEngine(cuda), ANCHOR_PARAMS, session, "ckbd build m --precision fp32"
    )
    yield runner, cuda, session
    runner.close()


def test_runner_reports_contract_specs(fake_runner: tuple[Any, FakeCuda, Any]) -> None:
    runner, _, _ = fake_runner
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs] == [
        ("hyper", "float32", (1, "2M", "h", "w"))
    ]
    assert [(s.name, s.dtype) for s in runner.outputs] == [
        ("anchor_indexes", "int32"),
        ("anchor_means", "float32"),
    ]


def test_runner_host_round_trip_reuses_buffers(fake_runner: tuple[Any, FakeCuda, Any]) -> None:
    runner, cuda, _ = fake_runner
    hyper = np.random.default_rng(0).normal(size=(1, 4, 4, 4)).astype(np.float64) * 10
    out = runner.run({"hyper": hyper})
    f32 = hyper.astype(np.float32)
    np.testing.assert_array_equal(out["anchor_indexes"], f32[:, :2, :, ::2].astype(np.int32))
    np.testing.assert_array_equal(out["anchor_means"], f32[:, 2:, :, ::2])
    assert out["anchor_means"].dtype == np.float32 and cuda.syncs == 1
    allocated = dict(cuda.memory)
    runner.run({"hyper": f32[:, :, :2, :2]})  # smaller: no new allocation
    assert cuda.memory.keys() == allocated.keys() and cuda.syncs == 2


def test_runner_keeps_outputs_on_device(fake_runner: tuple[Any, FakeCuda, Any]) -> None:
    from ckbd.engines.trt_backend import TrtDeviceTensor
    from ckbd.runtime.backend import DeviceTensor

    runner, cuda, _ = fake_runner
    hyper = np.ones((1, 4, 2, 4), np.float32)
    out = runner.run({"hyper": hyper}, keep={"anchor_means"})
    kept = out["anchor_means"]
    assert isinstance(kept, TrtDeviceTensor) and isinstance(kept, DeviceTensor)
    assert isinstance(out["anchor_indexes"], np.ndarray) and cuda.dtoh == 1
    assert kept.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(kept.to_host(), np.ones((1, 2, 2, 2), np.float32))
    runner.run({"hyper": hyper})
    with pytest.raises(CkbdError, match="overwritten by a later run"):
        kept.to_host()


def test_runner_feeds_own_device_tensors_without_copy(
    fake_runner: tuple[Any, FakeCuda, Any],
) -> None:
    from ckbd.engines.trt_backend import TrtDeviceTensor

    runner, cuda, session = fake_runner
    producer = HostDeviceBuffer(cuda, "hyper")
    producer.upload(np.full((1, 4, 2, 4), 3.0, np.float32), session.stream)
    uploads = cuda.htod
    tensor = TrtDeviceTensor(producer, session, HYPER_SYNTHESIS)
    out = runner.run({"hyper": tensor})
    assert cuda.htod == uploads  # read in place: no host round trip
    np.testing.assert_array_equal(out["anchor_indexes"], np.full((1, 2, 2, 2), 3, np.int32))

    foreign = TrtDeviceTensor(producer, type(session)(cuda, 7), HYPER_SYNTHESIS)
    runner.run({"hyper": foreign})  # another backend's tensor: copied through the host
    assert cuda.htod == uploads + 1


def test_runner_validates_feeds(fake_runner: tuple[Any, FakeCuda, Any]) -> None:
    runner, _, _ = fake_runner
    with pytest.raises(CkbdError, match="missing: hyper"):
        runner.run({})
    with pytest.raises(CkbdError, match="unknown: extra"):
        runner.run({"hyper": np.zeros((1, 4, 2, 2), np.float32), "extra": np.zeros(1)})
    with pytest.raises(CkbdError, match=r"outside what its engine was built for.*ckbd build m"):
        runner.run({"hyper": np.zeros((1, 4, 16, 16), np.float32)})


@pytest.fixture
def fake_backend(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> Iterator[tuple[Any, FakeCuda, Path]]:
    """A TensorRTBackend whose TensorRT runtime and CUDA API are the fakes from gpu_fakes."""
    cuda = FakeCuda()
    module = patch_tensorrt(monkeypatch, cuda, lambda data: FakeEngine(cuda) if data == b"plan" else None)
    backend = module.TensorRTBackend(precision="fp32")
    yield backend, cuda, model_dir
    backend.close()



def test_backend_loads_a_matching_engine(fake_backend: tuple[Any, FakeCuda, Path]) -> None:
    backend, _, model_dir = fake_backend
    install_engine(model_dir, ANCHOR_PARAMS, b"plan")
    runner = backend.load(model_dir, ANCHOR_PARAMS)
    out = runner.run({"hyper": np.full((1, 4, 2, 4), 2.0, np.float32)})
    np.testing.assert_array_equal(out["anchor_means"], np.full((1, 2, 2, 2), 2.0, np.float32))


def test_backend_refuses_missing_and_stale_engines(
    fake_backend: tuple[Any, FakeCuda, Path],
) -> None:
    backend, _, model_dir = fake_backend
    with pytest.raises(ModelError, match="no TensorRT engine .*ckbd build"):
        backend.load(model_dir, HYPER_SYNTHESIS)
    engine = install_engine(model_dir, ANCHOR_PARAMS, b"plan", compute_capability="8.6")
    with pytest.raises(ModelMismatchError, match="this GPU has 9.0.*Rebuild it with: ckbd build"):
        backend.load(model_dir, ANCHOR_PARAMS)
    install_engine(model_dir, ANCHOR_PARAMS, b"plan", source_sha256="0" * 64)
    with pytest.raises(ModelMismatchError, match="re-exported"):
        backend.load(model_dir, ANCHOR_PARAMS)
    install_engine(model_dir, ANCHOR_PARAMS, b"plan")
    engine.write_bytes(b"other plan")
    with pytest.raises(ModelMismatchError, match="does not match its metadata"):
        backend.load(model_dir, ANCHOR_PARAMS)
    install_engine(model_dir, ANCHOR_PARAMS, b"corrupt")
    with pytest.raises(ModelMismatchError, match="TensorRT could not load"):
        backend.load(model_dir, ANCHOR_PARAMS)
