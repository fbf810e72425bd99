"""The GPU path on fakes: CUDA provider options, integer-path routing, shared engines, pycuda's
context stack, and what a TensorRT run synchronises and allocates."""

from __future__ import annotations

import gc
import hashlib
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from gpu_fakes import FakeCuda, FakeEngine, patch_tensorrt, write_tables

from ckbd.engines.builder import BuildOptions, build_engines
from ckbd.engines.metadata import engine_path
from ckbd.engines.profiles import SizeProfile
from ckbd.errors import CkbdError, ModelError
from ckbd.runtime.manifest import GraphEntry, Manifest
from ckbd.runtime.ort_backend import CPU_PROVIDER, CUDA_PROVIDER, OnnxRuntimeBackend, OrtRunner
from ckbd.runtime.stages import (
    ALL_STAGES,
    ANALYSIS,
    ANCHOR_PARAMS,
    HYPER_SYNTHESIS,
    INDEX_STAGES,
    LATENT_SYNTHESIS,
)


def _make_model_dir(folder: Path, entropy_params: str = "float") -> Path:
    """Fake graphs for every stage plus an fp16 latent synthesis, listed with their hashes."""
    folder.mkdir()

    def entry(name: str, content: bytes) -> GraphEntry:
        (folder / name).write_bytes(content)
        return GraphEntry(file=name, sha256=hashlib.sha256(content).hexdigest())

    write_tables(folder, 8, [0.11, 0.2])
    Manifest(
        arch="mbt2018-ckbd", N=8, M=12, anchor_parity="even", fingerprint="cd" * 16,
        scale_table=[0.11, 0.2], opset=17,
        graphs={stage: entry(f"{stage}.onnx", f"graph {stage}".encode()) for stage in ALL_STAGES},
        variants={"fp16": {LATENT_SYNTHESIS: entry("latent_synthesis.fp16.onnx", b"fp16 graph")}},
        entropy_params=entropy_params,
        integer_params=entry("entropy_params.npz", b"spec") if entropy_params == "integer" else None,
    ).save(folder)
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))


class FakeSession:
    """An InferenceSession that records its providers; ``fallback`` plays a CUDA load failure."""

    fallback = False
    created: list[FakeSession] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.path, self.options, self.requested = path, sess_options, providers
        FakeSession.created.append(self)

    def get_providers(self) -> list[str]:
        names = [p[0] if isinstance(p, tuple) else p for p in self.requested]
        return [CPU_PROVIDER] if self.fallback else names

    def get_inputs(self) -> list[Any]:
        return []

    def get_outputs(self) -> list[Any]:
        return []


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    FakeSession.created = []
    FakeSession.fallback = False
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    return FakeSession


# --- ONNX Runtime's CUDA provider ------------------------------------------------------------


def test_cuda_provider_is_deterministic(tmp_path: Path, fake_ort: type[FakeSession]) -> None:
    model_dir = _make_model_dir(tmp_path / "m")
    backend = OnnxRuntimeBackend(device="cuda:1")
    assert backend.options.use_deterministic_compute
    for stage in ALL_STAGES:
        backend.load(model_dir, stage)
        (name, options), cpu = fake_ort.created[-1].requested
        assert (name, cpu) == (CUDA_PROVIDER, CPU_PROVIDER)
        assert options["use_tf32"] == "0" and options["device_id"] == "1"
        expected = "DEFAULT" if stage in INDEX_STAGES else "HEURISTIC"
        assert options["cudnn_conv_algo_search"] == expected  # never timing-based EXHAUSTIVE


def test_cuda_provider_falling_back_to_cpu_is_refused(tmp_path: Path, fake_ort: type[FakeSession]) -> None:
    model_dir = _make_model_dir(tmp_path / "m")
    fake_ort.fallback = True
    with pytest.raises(CkbdError, match="could not start its CUDA provider for latent_synthesis") as info:
        OnnxRuntimeBackend(device="cuda").load(model_dir, LATENT_SYNTHESIS)
    assert "\n" not in str(info.value)
    assert isinstance(OnnxRuntimeBackend("cpu").load(model_dir, LATENT_SYNTHESIS), OrtRunner)  # CPU: no check


def test_cuda_device_names(fake_ort: type[FakeSession]) -> None:
    assert OnnxRuntimeBackend("cuda").device_id == 0
    assert OnnxRuntimeBackend("cpu").device_id is None
    with pytest.raises(ModelError, match="unknown ONNX Runtime device"):
        OnnxRuntimeBackend("gpu")


def test_cuda_without_onnxruntime_gpu_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU_PROVIDER])
    with pytest.raises(CkbdError, match="no CUDA provider.*pip install onnxruntime-gpu"):
        OnnxRuntimeBackend("cuda")


def test_integer_path_without_known_answers_runs_index_stages_on_the_cpu_provider(
    tmp_path: Path, fake_ort: type[FakeSession]
) -> None:
    """An integer model exported before known-answer vectors cannot prove a CUDA session exact
    (tests/test_known_answers.py covers models that can)."""
    model_dir = _make_model_dir(tmp_path / "m", entropy_params="integer")
    backend = OnnxRuntimeBackend(device="cuda")
    for stage in ALL_STAGES:
        backend.load(model_dir, stage)
        providers = fake_ort.created[-1].requested
        assert (providers == [CPU_PROVIDER]) == (stage in INDEX_STAGES), stage


# --- TensorRT runs: synchronisation, pinned memory, addresses, threads ------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeCuda]]:
    fake_trt = types.SimpleNamespace(
        TensorIOMode=types.SimpleNamespace(INPUT=1, OUTPUT=2), nptype=lambda dtype: dtype
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    from ckbd.engines.trt_backend import TensorRTRunner, _Session

    cuda = FakeCuda()
    trt_runner = TensorRTRunner(FakeEngine(cuda), ANCHOR_PARAMS, _Session(cuda, 7), "ckbd build m")
    yield trt_runner, cuda
    trt_runner.close()


HYPER = np.arange(32, dtype=np.float32).reshape(1, 4, 2, 4)
BOTH = {"anchor_indexes", "anchor_means"}


def test_run_keeping_every_output_neither_waits_nor_pins(runner: tuple[Any, FakeCuda]) -> None:
    trt_runner, cuda = runner
    out = trt_runner.run({"hyper": HYPER}, keep=BOTH)
    assert cuda.syncs == 0 and cuda.dtoh == 0
    assert cuda.host_live == 1  # the input's staging twin only; kept outputs get none
    np.testing.assert_array_equal(out["anchor_means"].to_host(), HYPER[:, 2:, :, ::2])
    assert cuda.syncs == 1 and cuda.host_live == 2  # a twin appears when it is first downloaded


def test_unsynchronised_run_is_awaited_before_staging_is_reused(runner: tuple[Any, FakeCuda]) -> None:
    trt_runner, cuda = runner
    trt_runner.run({"hyper": HYPER}, keep=BOTH)
    assert cuda.syncs == 0
    trt_runner.run({"hyper": HYPER})  # waits before rewriting the staging twin, then once at the end
    assert cuda.syncs == 2
    trt_runner.run({"hyper": HYPER})
    assert cuda.syncs == 3


def test_refused_tensor_address_is_an_error(runner: tuple[Any, FakeCuda]) -> None:
    trt_runner, _ = runner
    trt_runner._ctx.set_tensor_address = lambda name, ptr: False
    with pytest.raises(CkbdError, match="refused the address of anchor_params tensor 'hyper'"):
        trt_runner.run({"hyper": HYPER})


def test_runner_belongs_to_its_thread(runner: tuple[Any, FakeCuda]) -> None:
    trt_runner, _ = runner
    errors: list[BaseException] = []

    def other() -> None:
        try:
            trt_runner.run({"hyper": HYPER})
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "one backend per thread" in str(errors[0])


# --- engine sets: one build per shared graph, integer-path routing ---------------------------


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Builds that only record (stage, graph precision) and write a recognisable plan."""
    import ckbd.engines.builder as builder

    calls: list[tuple[str, str]] = []

    def build_serialized(model_dir: Path, manifest: Manifest, stage: str, options: BuildOptions,
                         cache: Any, notes: list[str]) -> tuple[bytes, GraphEntry, str]:
        precision = builder.stage_precision(stage, options.precision, options.force_precision)
        calls.append((stage, precision))
        entry = builder._source_entry(model_dir, manifest, stage, precision)
        return f"plan {stage} {precision} #{len(calls)}".encode(), entry, precision

    monkeypatch.setattr(builder, "_build_serialized", build_serialized)
    monkeypatch.setattr(builder, "ensure_tensorrt", lambda purpose: None)
    monkeypatch.setattr(builder, "open_cuda", lambda device: FakeCuda())
    monkeypatch.setattr(builder, "tensorrt_version", lambda: "10.13.0.35")
    return calls


def _build(model_dir: Path, precision: str, **options: Any) -> list[Any]:
    return build_engines(model_dir, BuildOptions(precision=precision, **options), progress=lambda _: None)


def test_precision_sets_share_one_build_per_fp32_graph(tmp_path: Path, fake_build: list[tuple[str, str]]) -> None:
    model_dir = _make_model_dir(tmp_path / "m")
    _build(model_dir, "fp32")
    results = _build(model_dir, "fp16")
    assert sorted(fake_build) == sorted([(s, "fp32") for s in ALL_STAGES] + [(LATENT_SYNTHESIS, "fp16")])
    assert {r.stage for r in results if r.reused} == set(ALL_STAGES) - {LATENT_SYNTHESIS}
    engines = sorted(p.name for p in (model_dir / "engines").glob("*.engine"))
    assert engines == sorted([f"{s}.fp32.engine" for s in ALL_STAGES] + ["latent_synthesis.fp16.engine"])

    _build(model_dir, "fp16", profile=SizeProfile.parse("64x64", "128x128", "256x256"))
    assert fake_build.count((HYPER_SYNTHESIS, "fp32")) == 2  # another size profile: rebuilt
    _build(model_dir, "fp16", profile=SizeProfile.parse("64x64", "128x128", "256x256"), rebuild_shared=True)
    assert fake_build.count((HYPER_SYNTHESIS, "fp32")) == 3


def test_integer_path_builds_no_index_engines(tmp_path: Path, fake_build: list[tuple[str, str]]) -> None:
    model_dir = _make_model_dir(tmp_path / "m", entropy_params="integer")
    _build(model_dir, "fp16")
    assert sorted(fake_build) == [(ANALYSIS, "fp32"), (LATENT_SYNTHESIS, "fp16")]


@pytest.fixture
def trt_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[bytes], FakeCuda]]:
    """A TensorRTBackend at fp16 over FakeCuda, recording the engine bytes it deserialises."""
    cuda, loaded = FakeCuda(), []

    def deserialize(data: bytes) -> FakeEngine:
        loaded.append(data)
        return FakeEngine(cuda)

    module = patch_tensorrt(monkeypatch, cuda, deserialize)
    backend = module.TensorRTBackend(precision="fp16")
    yield backend, loaded, cuda
    backend.close()
    assert cuda.closed


def test_fp16_set_loads_the_shared_fp32_index_engines(
    tmp_path: Path, fake_build: list[tuple[str, str]], trt_backend: tuple[Any, list[bytes], FakeCuda]
) -> None:
    model_dir = _make_model_dir(tmp_path / "m")
    _build(model_dir, "fp16")
    backend, loaded, _ = trt_backend
    for stage in (HYPER_SYNTHESIS, LATENT_SYNTHESIS):
        backend.load(model_dir, stage)
    assert loaded == [engine_path(model_dir, HYPER_SYNTHESIS, "fp32").read_bytes(),
                      engine_path(model_dir, LATENT_SYNTHESIS, "fp16").read_bytes()]


def test_tensorrt_integer_path_runs_index_stages_through_onnxruntime(
    tmp_path: Path, fake_ort: type[FakeSession], trt_backend: tuple[Any, list[bytes], FakeCuda]
) -> None:
    """No engines for the integer stages; without known answers ORT's CUDA session gives way to its CPU one."""
    model_dir = _make_model_dir(tmp_path / "m", entropy_params="integer")
    backend, loaded, _ = trt_backend
    for stage in INDEX_STAGES:
        assert isinstance(backend.load(model_dir, stage), OrtRunner)
        assert fake_ort.created[-1].requested == [CPU_PROVIDER]
    with pytest.raises(ModelError, match="ckbd build"):  # latent synthesis still needs its engine
        backend.load(model_dir, LATENT_SYNTHESIS)
    assert loaded == []


def test_onnx_parser_gets_an_absolute_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ckbd.engines.builder as builder

    seen: list[str] = []

    class Parser:
        def __init__(self, network: Any, logger: Any) -> None:
            pass

        def parse(self, data: bytes, path: str) -> bool:
            seen.append(path)
            return True

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(OnnxParser=Parser))
    monkeypatch.setattr(builder, "tensorrt_logger", lambda: None)
    monkeypatch.chdir(tmp_path)
    builder._parse_onnx(None, b"graph", Path("model") / "analysis.onnx")  # type: ignore[arg-type]
    assert seen == [str(tmp_path / "model" / "analysis.onnx")]


# --- pycuda's context stack ------------------------------------------------------------------


@pytest.fixture
def fake_pycuda(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """pycuda.driver with a context stack: the primary context of device 0 and nothing else."""
    stack: list[Any] = []

    class Context:
        def push(self) -> None:
            stack.append(self)

        @staticmethod
        def pop() -> None:
            stack.pop()

        @staticmethod
        def get_current() -> Any:
            return stack[-1] if stack else None

    primary = Context()
    driver = types.ModuleType("pycuda.driver")
    driver.Error = RuntimeError  # type: ignore[attr-defined]
    driver.Context = Context  # type: ignore[attr-defined]
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = lambda index: types.SimpleNamespace(retain_primary_context=lambda: primary)  # type: ignore[attr-defined]
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    stack.append(Context)  # a marker for "whatever was current before" (never popped by us)
    stack.clear()
    return stack


def test_pycuda_pushes_and_pops_are_balanced(fake_pycuda: list[Any]) -> None:
    from ckbd.engines.cuda_memory import open_cuda
    from ckbd.engines.pycuda_api import PyCudaApi

    stack = fake_pycuda
    first = PyCudaApi(0)
    second = open_cuda(0, prefer="pycuda")
    assert len(stack) == 1  # already current: not pushed twice
    other = object()
    stack.append(other)  # another library makes its context current
    second.activate()
    assert len(stack) == 3
    second.close()
    second.close()  # idempotent
    assert stack[-1] is other
    stack.pop()  # the other library pops its own
    first.close()
    assert stack == []

    forgotten = PyCudaApi(0)
    forgotten.activate()
    assert len(stack) == 1
    del forgotten
    gc.collect()
    assert stack == []  # an API never closed still pops on collection (or at exit)
