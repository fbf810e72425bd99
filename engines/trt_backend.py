"""The TensorRT backend: prebuilt engines run through the name-based TensorRT 10/11 API.

:class:`TensorRTBackend` loads ``DIR/engines/<stage>.<precision>.engine`` (see
:mod:`ckbd.engines.builder`), refusing a stale one with the command that rebuilds it. Every runner
of one backend enqueues on the same CUDA stream, so an output kept on the device
(:class:`TrtDeviceTensor`) can feed the next stage with no copy and no extra synchronisation:
stream order is the dependency. A run synchronises once, at its end, and only when it copies an
output to the host; a run whose outputs all stay on the device (hyper synthesis in the codec)
returns without waiting, and the next host upload waits for it first.

Execution contexts and the stream are not re-entrant: a backend (and the device tensors it hands
out) belongs to the thread that created it; open one backend per thread.

On the integer entropy-parameter path the index-deciding stages
(:func:`~ckbd.runtime.self_check.integer_stage`) run through ONNX Runtime instead: on its CUDA
provider on the same device when onnxruntime-gpu is installed, kept only if they pass the model's
known-answer vectors (:mod:`ckbd.runtime.self_check`), else on its CPU provider. Stages that do not follow
the precision load the fp32 engine shared by every precision set (:mod:`ckbd.engines.policy`).

``tensorrt`` and the CUDA bindings are imported inside the constructor, never at module import.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckbd.engines import (
    dims_tuple,
    ensure_tensorrt,
    recent_errors,
    tensorrt_logger,
    tensorrt_version,
)
from ckbd.engines.cuda_memory import CudaApi, DeviceProperties, HostDeviceBuffer, open_cuda
from ckbd.engines.metadata import (
    EngineMetadata,
    Expected,
    check_compatible,
    engine_path,
    graph_entry,
    missing_engine_error,
    read_metadata,
    rebuild_command,
    sidecar_path,
)
from ckbd.engines.policy import check_precision, loaded_precision
from ckbd.errors import CkbdError, ModelMismatchError
from ckbd.runtime.backend import Runner, Tensor, to_host
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.ort_backend import OnnxRuntimeBackend, integer_stage_backend
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.self_check import integer_stage
from ckbd.runtime.stages import STAGE_IO, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

    from ckbd.runtime.backend import Backend, DeviceTensor


@dataclass(eq=False)
class _Session:
    """What all runners of one backend share: the CUDA API, the one stream, its owner thread."""

    api: CudaApi
    stream: int
    pending: bool = False  # work was enqueued after the last synchronisation
    thread: int = field(default_factory=threading.get_ident)

    def enter(self) -> None:
        """Check the calling thread owns the backend and make its device current."""
        if threading.get_ident() != self.thread:
            raise CkbdError(
                "a TensorRT backend is used from a thread other than the one that opened it; "
                "open one backend per thread"
            )
        self.api.activate()

    def settle(self) -> None:
        """Wait for enqueued work, so pinned staging memory may be rewritten."""
        if self.pending:
            self.api.synchronize(self.stream)
            self.pending = False


class TrtDeviceTensor:
    """A stage output left in device memory; valid until its runner runs again."""

    def __init__(self, buffer: HostDeviceBuffer, session: _Session, stage: str) -> None:
        self._buffer = buffer
        self._session = session
        self._generation = buffer.generation
        self._shape = buffer.shape
        self._dtype = buffer.dtype
        self._stage = stage

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def name(self) -> str:
        return self._buffer.name

    def belongs_to(self, session: object) -> bool:
        return self._session is session

    @property
    def device_ptr(self) -> int:
        """The device address, after checking no later run has overwritten it."""
        if self._buffer.generation != self._generation:
            raise CkbdError(
                f"device tensor '{self.name}' was overwritten by a later run of {self._stage}; "
                "use it before running that stage again, or copy it with to_host()"
            )
        return self._buffer.ptr

    def to_host(self) -> np.ndarray:
        _ = self.device_ptr  # raises if a later run overwrote it
        self._session.enter()
        self._buffer.enqueue_download(self._session.stream)
        self._session.api.synchronize(self._session.stream)
        self._session.pending = False
        return self._buffer.host_view().copy()

    def __repr__(self) -> str:
        return f"TrtDeviceTensor({self.name!r}, shape={self._shape}, dtype={self._dtype})"


class TensorRTRunner:
    """One deserialised engine with one execution context and buffers reused across runs."""

    def __init__(
        self,
        engine: trt.ICudaEngine,
        stage: str,
        session: _Session,
        rebuild_hint: str,
        runtime: object = None,
    ) -> None:
        import tensorrt as trt

        context = engine.create_execution_context()
        if context is None:
            raise CkbdError(
                f"TensorRT could not create an execution context for {stage} (GPU memory?)"
            )
        # Attribute order is teardown order: context, then its engine, then the runtime.
        self._context: trt.IExecutionContext | None = context
        self._engine = engine
        self._runtime = runtime
        self.stage = stage
        self._session = session
        self._rebuild_hint = rebuild_hint
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._input_names = tuple(n for n in names if is_input[n])
        self._output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: HostDeviceBuffer(session.api, n) for n in names}
        self.inputs = tuple(self._spec(n) for n in self._input_names)
        self.outputs = tuple(self._spec(n) for n in self._output_names)

    def _spec(self, name: str) -> TensorSpec:
        """The contract's symbolic spec with the engine's actual element type."""
        contract = {s.name: s for group in STAGE_IO.get(self.stage, ((), ())) for s in group}
        shape: tuple[int | str, ...] = dims_tuple(self._engine.get_tensor_shape(name))
        if name in contract:
            shape = contract[name].shape
        return TensorSpec(name, self._dtypes[name].name, shape)

    @property
    def _ctx(self) -> trt.IExecutionContext:
        if self._context is None:
            raise CkbdError(f"the {self.stage} runner was closed")
        return self._context

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Enqueue copies in, the engine, copies out; synchronise once if anything comes back."""
        session, stream = self._session, self._session.stream
        self._check_feed_names(feeds)
        session.enter()
        for name in self._input_names:
            self._bind_input(name, feeds[name])
        for name in self._output_names:
            self._bind_output(name)
        recent_errors()
        if not self._ctx.execute_async_v3(stream):
            details = "; ".join(recent_errors()) or "see the TensorRT log"
            raise CkbdError(f"TensorRT failed to run {self.stage}: {details}")
        session.pending = True
        to_copy = [n for n in self._output_names if n not in keep]
        for name in to_copy:
            self._buffers[name].enqueue_download(stream)
        if to_copy:
            session.settle()
        results: dict[str, Tensor] = {}
        for name in self._output_names:
            buffer = self._buffers[name]
            if name in keep:
                results[name] = TrtDeviceTensor(buffer, self._session, self.stage)
            else:
                results[name] = buffer.host_view().copy()  # the pinned twin is reused next run
        return results

    def _check_feed_names(self, feeds: Mapping[str, Tensor]) -> None:
        missing = [n for n in self._input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self._input_names]
        if missing or unknown:
            raise CkbdError(
                f"{self.stage} takes inputs {', '.join(self._input_names)}; "
                f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(unknown) or '-'}"
            )

    def _bind_input(self, name: str, feed: Tensor) -> None:
        """Bind a feed: our own device tensors in place, anything else through pinned staging."""
        dtype = self._dtypes[name]
        if isinstance(feed, TrtDeviceTensor) and feed.belongs_to(self._session):
            if feed.dtype != dtype:
                raise CkbdError(
                    f"{self.stage} input '{name}' is {dtype}, the device tensor fed is {feed.dtype}"
                )
            ptr, shape = feed.device_ptr, feed.shape
        else:
            array = np.ascontiguousarray(to_host(feed), dtype=dtype)
            buffer = self._buffers[name]
            self._session.settle()  # an earlier run may still be copying from the pinned twin
            buffer.upload(array, self._session.stream)
            ptr, shape = buffer.ptr, buffer.shape
        if not self._ctx.set_input_shape(name, shape):
            raise self._shape_error(name, shape)
        self._set_address(name, ptr)

    def _bind_output(self, name: str) -> None:
        shape = dims_tuple(self._ctx.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise CkbdError(f"TensorRT cannot infer the shape of {self.stage} output '{name}'")
        buffer = self._buffers[name]
        buffer.reserve(shape, self._dtypes[name])
        self._set_address(name, buffer.ptr)

    def _set_address(self, name: str, ptr: int) -> None:
        if not self._ctx.set_tensor_address(name, ptr):
            details = "; ".join(recent_errors()) or "see the TensorRT log"
            raise CkbdError(f"TensorRT refused the address of {self.stage} tensor '{name}': {details}")

    def max_input_shape(self, name: str) -> tuple[int, ...] | None:
        """The largest shape of input ``name`` the engine's profile accepts: the codec tiles
        larger images so that every run fits (see ckbd.runtime.tiling)."""
        try:
            return dims_tuple(self._engine.get_tensor_profile_shape(name, 0)[2])
        except (RuntimeError, ValueError):
            return None

    def _shape_error(self, name: str, shape: tuple[int, ...]) -> CkbdError:
        try:
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            allowed = f"{dims_tuple(low)} .. {dims_tuple(high)}"
        except (RuntimeError, ValueError):
            allowed = str(dims_tuple(self._engine.get_tensor_shape(name)))
        return CkbdError(
            f"{self.stage} input '{name}' has shape {shape}, outside what its engine was built "
            f"for ({allowed}); rebuild with a larger --max-size (or smaller --min-size): "
            f"{self._rebuild_hint}"
        )

    def close(self) -> None:
        """Free this runner's buffers and context; the backend's stream stays."""
        for buffer in self._buffers.values():
            buffer.free()
        self._context = None


class TensorRTBackend:
    """Loads the prebuilt engines of a model directory; all runners share one CUDA stream."""

    name = "tensorrt"

    def __init__(self, device: int = 0, precision: str = "fp32", threads: int = 0) -> None:
        check_precision(precision)
        self.threads = threads  # for the stages that run on ONNX Runtime's CPU provider (integer path)
        ensure_tensorrt("the TensorRT backend")
        import tensorrt as trt

        self.device = device
        self.precision = precision
        api = open_cuda(device)
        self.gpu: DeviceProperties = api.device_properties()
        self._session = _Session(api, api.create_stream())
        self._runtime = trt.Runtime(tensorrt_logger())
        self._runners: list[TensorRTRunner] = []
        self._ort: OnnxRuntimeBackend | None = None
        self._closed = False

    @property
    def stream(self) -> int:
        """The CUDA stream every runner of this backend enqueues on."""
        return self._session.stream

    def load(self, package: ModelPackage | Path, stage: str) -> Runner:
        """Check and deserialise the stage's engine, or load an integer stage on ONNX Runtime (see above)."""
        if self._closed:
            raise CkbdError("this TensorRT backend was closed")
        package = ModelPackage.of(package)
        model_dir, manifest = package.directory(), package.manifest
        if integer_stage(manifest, stage):
            self._ort = self._ort or integer_stage_backend(self.device, self.threads)
            return self._ort.load(package, stage)
        path = engine_path(model_dir, stage, loaded_precision(model_dir, stage, self.precision))
        if not path.is_file() or not sidecar_path(path).is_file():
            raise missing_engine_error(model_dir, stage, self.precision, path)
        meta = read_metadata(path)
        data = path.read_bytes()
        self._check(model_dir, manifest, stage, meta, data, path)
        self._session.enter()
        recent_errors()
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            details = "; ".join(recent_errors()) or "see the TensorRT log"
            raise ModelMismatchError(
                f"TensorRT could not load {path} ({details}). Rebuild it with: "
                f"{self._rebuild(model_dir, meta)}"
            )
        hint = self._rebuild(model_dir, meta)
        runner = TensorRTRunner(engine, stage, self._session, hint, self._runtime)
        self._runners.append(runner)
        return runner

    def _check(
        self,
        model_dir: Path,
        manifest: Manifest,
        stage: str,
        meta: EngineMetadata,
        data: bytes,
        path: Path,
    ) -> None:
        """Refuse an engine built elsewhere, by another TensorRT, or from another graph."""
        entry = graph_entry(manifest, stage, meta.graph_precision)
        if entry is None:
            raise ModelMismatchError(
                f"engine {path} was built from the {meta.graph_precision} '{stage}' graph, which "
                f"manifest.json no longer lists. Rebuild it with: {self._rebuild(model_dir, meta)}"
            )
        expected = Expected(
            stage=stage,
            precision=loaded_precision(model_dir, stage, self.precision),
            tensorrt_version=tensorrt_version(),
            compute_capability=self.gpu.compute_capability_str,
            source_sha256=entry.sha256,
            engine_sha256=hashlib.sha256(data).hexdigest(),
        )
        check_compatible(meta, expected, model_dir, path)

    def _rebuild(self, model_dir: Path, meta: EngineMetadata) -> str:
        return rebuild_command(model_dir, self.precision, meta.profile, meta.forced_precision)

    def close(self) -> None:
        """Free every runner's memory and the stream; the backend cannot load afterwards."""
        for runner in self._runners:
            runner.close()
        self._runners.clear()
        if self._ort is not None:
            self._ort.close()
        if not self._closed:
            self._closed = True
            self._session.api.destroy_stream(self._session.stream)
            self._session.api.close()

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:

    def _conforms(
        backend: TensorRTBackend, runner: TensorRTRunner, tensor: TrtDeviceTensor
    ) -> tuple[Backend, Runner, DeviceTensor]:
        """Makes mypy check these classes against the backend protocols."""
        return backend, runner, tensor
