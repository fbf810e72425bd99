"""ONNX Runtime backend: the embedded default (CPU provider), CUDA provider with onnxruntime-gpu.

The CUDA provider is configured so that the same graph gives the same numbers in every session of a
machine: TF32 off, and convolution algorithms chosen without timing (``EXHAUSTIVE``, the provider's
default, benchmarks algorithms per session, so an encoder and a decoder session could compute scale
indexes with different kernels). On the integer entropy-parameter path the three index-deciding
graphs run on the CUDA provider with cuDNN's fixed default algorithm (an implicit-GEMM convolution,
exact on integer values below 2**24) once they pass the package's known-answer vectors
(:mod:`ckbd.runtime.self_check`); a session that fails them is replaced by a CPU-provider one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError, ModelError, ResourceError
from ckbd.runtime.backend import ClosingBackend, Tensor, to_host
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.self_check import cuda_identity, guard_integer_runner, integer_stage, loaded_libraries
from ckbd.runtime.stages import INDEX_STAGES, TensorSpec
from ckbd.runtime.working_memory import retains_working_memory

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
              "tensor(float16)": "float16", "tensor(int64)": "int64"}
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_provider_options(stage: str, device_id: int = 0) -> dict[str, str]:
    """CUDA provider options for ``stage``: no TF32, convolution algorithms picked without timing.

    Index-deciding graphs get cuDNN's fixed default algorithm (implicit precomputed GEMM: real
    multiply-adds, never Winograd or FFT), so the choice cannot depend on a heuristic that differs
    between cuDNN versions; the others take the heuristic's (faster) pick.
    """
    search = "DEFAULT" if stage in INDEX_STAGES else "HEURISTIC"
    return {"device_id": str(device_id), "use_tf32": "0", "cudnn_conv_algo_search": search}


_OUT_OF_MEMORY = "out of memory: ONNX Runtime could not allocate a buffer (std::bad_alloc)"


def _is_allocation_failure(exc: Exception) -> bool:
    text = str(exc).lower()
    return "bad_alloc" in text or "failed to allocate" in text or "out of memory" in text


def _specs(args: list) -> tuple[TensorSpec, ...]:  # type: ignore[type-arg]
    return tuple(
        TensorSpec(a.name, _ORT_TYPES.get(a.type, a.type), tuple(d if d is not None else "?" for d in a.shape))
        for a in args
    )


class OrtRunner:
    """One InferenceSession, created once and reused for every image.

    Runs that may keep their working memory (:mod:`ckbd.runtime.working_memory`: small images)
    use ``session``, whose arena keeps its buffers; the others use a second session of the same
    graph without an arena, made by ``lean`` on first need (same kernels, same numbers).
    """

    def __init__(self, session: object, stage: str = "", lean: Callable[[], object] | None = None) -> None:
        self._session: object | None = session
        self._lean_factory = lean
        self._lean: object | None = None
        self._lean_lock = threading.Lock()
        self.stage = stage
        self.inputs = _specs(session.get_inputs())  # type: ignore[attr-defined]
        self.outputs = _specs(session.get_outputs())  # type: ignore[attr-defined]
        self._names = [o.name for o in self.outputs]

    @property
    def session(self) -> Any:
        if self._session is None:
            raise CkbdError(f"the {self.stage or 'ONNX Runtime'} runner was closed")
        return self._session

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually runs on (ORT falls back silently)."""
        return list(self.session.get_providers())

    def close(self) -> None:
        """Drop the sessions: ONNX Runtime frees their graphs and buffers (device memory too)."""
        self._session = None
        self._lean = None

    def session_for(self, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """The session a run with these input shapes uses (see the class docstring)."""
        session = self.session
        if self._lean_factory is None or retains_working_memory(self.stage, shapes):
            return session
        with self._lean_lock:
            if self._lean is None:
                self._lean = self._lean_factory()
            return self._lean

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        host = {name: np.ascontiguousarray(to_host(value)) for name, value in feeds.items()}
        session = self.session_for({name: value.shape for name, value in host.items()})
        try:
            results = session.run(self._names, host)
        except MemoryError:  # pybind11's translation of std::bad_alloc
            raise ResourceError(_OUT_OF_MEMORY) from None
        except Exception as exc:  # ORT's RuntimeException for a failed allocation
            if not _is_allocation_failure(exc):
                raise
            raise ResourceError(_OUT_OF_MEMORY) from None
        return dict(zip(self._names, results))


#: ``optimization`` names -> ONNX Runtime's GraphOptimizationLevel members.
OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeBackend(ClosingBackend):
    """Loads stage graphs into ONNX Runtime sessions.

    ``threads`` sets intra-op parallelism (0: ORT's default, all cores). ``device="cuda"`` (or
    ``"cuda:N"``) asks for the CUDA execution provider, which only onnxruntime-gpu has.
    ``optimization`` is ORT's graph optimisation level (one of :data:`OPTIMIZATION_LEVELS`); the
    determinism check decodes at every level.
    """

    name = "onnxruntime"

    def __init__(self, device: str = "cpu", threads: int = 0, precision: str = "fp32",
                 optimization: str = "all") -> None:
        import onnxruntime as ort

        self._runners = []
        if optimization not in OPTIMIZATION_LEVELS:
            raise ModelError(f"unknown ONNX Runtime optimisation level '{optimization}' "
                             f"({', '.join(OPTIMIZATION_LEVELS)})")
        self._ort = ort
        self.precision = precision
        self.device_id = self._cuda_device(device)
        self.optimization = optimization
        self.threads = threads
        #: Production settings of a session that keeps its working memory (tools profile with these).
        self.options = self.session_options(arena=True)
        #: The same without the arena: runs whose working memory goes back to the system.
        self.lean_options = self.session_options(arena=False)

    def session_options(self, arena: bool) -> Any:
        """The session settings of this backend, with or without ONNX Runtime's CPU arena."""
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self.optimization])
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # fatal only: failures come back as exceptions, reported in one line
        # A finished run's worker threads sleep instead of spinning: a codec alternates four or five
        # sessions, each with its own thread pool, and a spinning pool took a core from the next
        # stage (paper-size model, Kodak, 2 threads: decode 460 -> 390 ms; one session alone: no change).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.use_deterministic_compute = self.device_id is not None
        # With the arena a run's buffers serve the next run (small images). Without it a stage's
        # working memory goes back to the system when the stage returns, so the peak of a large
        # decode is its largest stage, not the sum of every stage's high-water mark (measured: latent
        # synthesis 300 instead of 460 bytes/pixel; see ckbd.runtime.working_memory and .memory).
        options.enable_cpu_mem_arena = arena
        return options

    def _cuda_device(self, device: str) -> int | None:
        """None for the CPU; the CUDA device index for ``cuda``/``cuda:N``."""
        if device == "cpu":
            return None
        kind, _, index = device.partition(":")
        if kind != "cuda" or not (index.isdigit() or index == ""):
            raise ModelError(f"unknown ONNX Runtime device '{device}' (cpu, cuda or cuda:N)")
        if CUDA_PROVIDER not in self._ort.get_available_providers():
            # Not an extra: onnxruntime-gpu replaces onnxruntime (both install the same module).
            raise CkbdError(
                f"onnxruntime {self._ort.__version__} has no CUDA provider; for ONNX Runtime on CUDA replace it "
                "with onnxruntime-gpu (pip uninstall onnxruntime && pip install onnxruntime-gpu)"
            )
        return int(index or 0)

    def _session(self, path: Path, options: Any, providers: list[str | tuple[str, dict[str, str]]]) -> Any:
        try:
            return self._ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise ModelError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None

    def providers_for(self, stage: str) -> list[str | tuple[str, dict[str, str]]]:
        """The provider list a session of ``stage`` is created with."""
        if self.device_id is None:
            return [CPU_PROVIDER]
        return [(CUDA_PROVIDER, cuda_provider_options(stage, self.device_id)), CPU_PROVIDER]

    def load(self, package: ModelPackage | Path, stage: str) -> OrtRunner:
        """A runner of ``stage``; on CUDA an integer stage must first pass its known answers."""
        package = ModelPackage.of(package)
        runner = self._load(package, stage, self.providers_for(stage))
        if self.device_id is None or not integer_stage(package.manifest, stage):
            return runner
        return guard_integer_runner(  # type: ignore[return-value]
            runner, package, stage, device=self.device_label(), identity=self.identity(package, stage),
            fallback=lambda: self._load(package, stage, [CPU_PROVIDER]))

    def _load(self, package: ModelPackage, stage: str, providers: list[str | tuple[str, dict[str, str]]]) -> OrtRunner:
        path = package.graph_path(stage, self.precision)
        session = self._session(path, self.options, providers)
        runner = self._handed_out(OrtRunner(session, stage, lambda: self._session(path, self.lean_options, providers)))
        if len(providers) > 1 and CUDA_PROVIDER not in runner.providers:
            raise CkbdError(
                f"ONNX Runtime could not start its CUDA provider for {stage} and fell back to the CPU; "
                "check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed and a GPU is visible"
            )
        return runner

    def device_label(self) -> str:
        """How notices name this backend's device, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
        found = cuda_identity(self.device_id or 0)
        where = f"cuda:{self.device_id}"
        return f"{where} ({found['gpu']})" if found else where

    def identity(self, package: ModelPackage, stage: str) -> dict[str, str] | None:
        """What a CUDA session's results depend on besides the model (None: cannot tell)."""
        found = cuda_identity(self.device_id or 0)
        if found is None:
            return None
        return {"backend": "onnxruntime-cuda", "onnxruntime": self._ort.__version__,
                "graph": package.graph(stage, self.precision).sha256, "libraries": loaded_libraries(),
                "options": json.dumps(cuda_provider_options(stage), sort_keys=True), **found}


def integer_stage_backend(device_id: int, threads: int = 0) -> OnnxRuntimeBackend:
    """Where a TensorRT backend runs the integer stages: ONNX Runtime's CUDA provider on its device
    (each stage self-checked at load), or its CPU provider, with a notice, without onnxruntime-gpu."""
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return OnnxRuntimeBackend(f"cuda:{device_id}", threads=threads)
    from ckbd.progress import notice

    notice(f"onnxruntime {ort.__version__} has no CUDA provider: the integer entropy-parameter stages run "
           "on its CPU provider (install onnxruntime-gpu instead of onnxruntime to run them on the GPU)")
    return OnnxRuntimeBackend("cpu", threads=threads)
