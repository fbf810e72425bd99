"""The torch reference backend: the plain stage modules behind the runtime's Backend interface.

It runs the model's own, un-rewritten computation, so it is what the exported graphs are checked
against, and it lets the codec encode and decode with a checkpoint directly (same manifest and
fingerprint as its ONNX export). Registered as ``torch`` in the backend registry; this module
imports torch at its top, so the registry imports it only when a torch backend is created. On the integer entropy-parameter path its streams and the ONNX
export's decode on each other bit-exactly; on the float path only up to float differences, which
can make a stream undecodable (docs/DETERMINISM.md).

On a CUDA device it is also a fast decoder: the integer path's index stages run in float32 GEMM
form (:mod:`ckbd.export.gemm_stages`, exact on any device), outputs the codec keeps stay on the
device (:mod:`ckbd.export.torch_device`), and the image transforms may run in fp16 or bf16
(``precision``) and, on CUDA, channels_last.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor as TorchTensorType
from torch import nn

from ckbd.errors import CkbdError, ModelError
from ckbd.export.gemm_stages import gemm_stage_modules
from ckbd.export.model_package import build_package, check_exported_from
from ckbd.export.stage_modules import (
    PlainParts,
    check_stages,
    plain_stage_modules,
    require_checkerboard,
    scale_table_tensor,
    stage_modules,
)
from ckbd.export.torch_device import (
    NUMPY_TYPES,
    TorchTensor,
    host_arrays,
    index_dtype,
    new_stream,
    on_stream,
    synchronize,
    to_device,
    torch_device,
)
from ckbd.models.architectures import CheckerboardModel, HyperpriorModel
from ckbd.runtime.backend import Backend, ClosingBackend, Runner, Tensor, to_host
from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams
from ckbd.runtime.memory import MemoryBudget
from ckbd.runtime.package import ModelPackage, default_checkpoint
from ckbd.runtime.self_check import cuda_identity, guard_integer_runner
from ckbd.runtime.stages import ANALYSIS, LATENT_SYNTHESIS, STAGE_IO, TensorSpec

C = TypeVar("C")

#: ``precision`` -> the dtype the image transforms (g_a, h_a, g_s) compute in.
TRANSFORM_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_TRANSFORMS = {ANALYSIS: ("g_a", "h_a"), LATENT_SYNTHESIS: ("g_s",)}


class TransformParts(PlainParts):
    """The reference parts with the image transforms (g_a, h_a, g_s) as copies in ``dtype``, in
    channels_last where that is faster (CUDA); only those ``stage`` uses are copied.

    Only the transforms change: the z medians, the hyper synthesis and the entropy parameters stay
    the fp32 model's, and each transform's output returns as float32, so rounding, packing and
    pixel quantisation are the fp32 stage wiring.
    """

    def __init__(self, model: CheckerboardModel, scale_table: list[float], stage: str, dtype: torch.dtype,
                 channels_last: bool) -> None:
        super().__init__(model, scale_table_tensor(scale_table))
        self.dtype = dtype
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.transforms = nn.ModuleDict({name: copy.deepcopy(getattr(model, name)).to(dtype=dtype, memory_format=self.layout)
                                         for name in _TRANSFORMS[stage]})

    def _run(self, name: str, x: TorchTensorType) -> TorchTensorType:
        return self.transforms[name](x.to(dtype=self.dtype, memory_format=self.layout)).float()

    def analysis(self, image: TorchTensorType) -> TorchTensorType:
        return self._run("g_a", image)

    def hyper_analysis(self, y: TorchTensorType) -> TorchTensorType:
        return self._run("h_a", y)

    def synthesis(self, y_hat: TorchTensorType) -> TorchTensorType:
        return self._run("g_s", y_hat)


class TorchRunner:
    """One stage module run under ``torch.inference_mode()`` on one device.

    Feeds are host arrays or :class:`TorchTensor` outputs of this backend; outputs named in
    ``keep`` stay where they were computed, the others come back as host arrays (``narrow``: the
    dtype each crosses in, see :func:`~ckbd.export.torch_device.host_arrays`). CUDA work is queued
    on ``stream`` (the backend's). With ``synchronize`` a run returns only when its device work is
    done, so that a wall-clock timer around it measures the stage (``ckbd profile``); otherwise
    kept outputs may still be computing.
    """

    def __init__(self, stage: str, module: nn.Module, device: torch.device | str = "cpu",
                 narrow: Mapping[str, torch.dtype] | None = None, synchronize: bool = False,
                 stream: torch.cuda.Stream | None = None) -> None:
        self.stage = stage
        self.device = torch.device(device)
        self._module: nn.Module | None = module.eval().to(self.device)
        self.inputs, self.outputs = STAGE_IO[stage]
        self.narrow = dict(narrow or {})
        self.synchronize = synchronize
        self.stream = stream

    def _feed(self, feeds: Mapping[str, Tensor], spec: TensorSpec) -> TorchTensorType:
        if spec.name not in feeds:
            raise ModelError(f"stage {self.stage} needs the input '{spec.name}'")
        feed = feeds[spec.name]
        if isinstance(feed, TorchTensor) and feed.tensor.device == self.device and feed.dtype == spec.dtype:
            return feed.tensor
        array = np.ascontiguousarray(to_host(feed), dtype=NUMPY_TYPES[spec.dtype])
        return to_device(array, self.device)

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Run the stage; outputs in ``keep`` are returned as :class:`TorchTensor`."""
        if self._module is None:
            raise CkbdError(f"the {self.stage} runner was closed")
        dtypes = {spec.name: spec.dtype for spec in self.outputs}
        with on_stream(self.stream), torch.inference_mode():
            result = self._module(*(self._feed(feeds, spec) for spec in self.inputs))
            results = dict(zip(dtypes, result if isinstance(result, tuple) else (result,)))
            host = host_arrays({k: v for k, v in results.items() if k not in keep}, dtypes, self.narrow)
        if self.synchronize:
            synchronize(self.stream)
        return {name: host[name] if name in host else TorchTensor(value, dtypes[name], self.stream)
                for name, value in results.items()}

    def close(self) -> None:
        self._module = None


class TorchBackend(ClosingBackend):
    """:class:`~ckbd.runtime.backend.Backend` running a checkpoint's own modules for a package.

    ``checkpoint`` is a checkerboard model, its checkpoint file, or None for the shipped checkpoint. The
    first :meth:`load` checks that the package was exported from it (same fingerprint on the same
    entropy-parameter path); graph files are never read. ``device`` (``cpu``, ``cuda`` or
    ``cuda:N``) is where the stages run, except ``cpu_stages``, which stay on the CPU.
    ``precision`` (fp32, fp16, bf16) is what the image transforms compute in; the index-deciding
    stages are fp32 always (exact GEMM form on the integer path). ``synchronize``: see
    :class:`TorchRunner`.
    """

    name = "torch"

    def __init__(self, checkpoint: HyperpriorModel | Path | str | None = None, device: str = "cpu",
                 cpu_stages: Collection[str] = (), threads: int = 0, precision: str = "fp32",
                 synchronize: bool = False) -> None:
        if precision not in TRANSFORM_DTYPES:
            raise ModelError(f"the torch backend runs the image transforms in {', '.join(TRANSFORM_DTYPES)}, "
                             f"not {precision}")
        self.device = torch_device(device)
        self.stream = new_stream(self.device)  # this backend's CUDA work, apart from other threads' codecs
        if threads > 0:
            torch.set_num_threads(threads)
        self._source = checkpoint
        self.model: CheckerboardModel | None = None
        if isinstance(checkpoint, HyperpriorModel):
            self.model = require_checkerboard(checkpoint).eval()
        self.precision = precision
        self.synchronize = synchronize
        self.cpu_stages = frozenset(cpu_stages)
        self._runners: list[Runner] = []
        self._bound: tuple[str, dict[str, nn.Module]] | None = None  # (fingerprint, integer modules)
        self._fallback: Backend | None = None

    def load(self, package: ModelPackage | Path, stage: str) -> Runner:
        package = ModelPackage.of(package)
        (stage,) = check_stages((stage,))
        device = torch.device("cpu") if stage in self.cpu_stages else self.device
        integer = self._bind(package)
        table = package.manifest.scale_table
        if stage in integer:
            module = integer[stage]
        elif stage in _TRANSFORMS and (self.precision != "fp32" or device.type == "cuda"):
            parts = TransformParts(self._model(), table, stage, TRANSFORM_DTYPES[self.precision], device.type == "cuda")
            module = stage_modules(parts, (stage,))[stage]
        else:
            module = plain_stage_modules(self._model(), table, (stage,))[stage]
        narrow = {spec.name: index_dtype(len(table)) for spec in STAGE_IO[stage][1] if spec.name.endswith("_indexes")}
        stream = self.stream if device == self.device else None
        runner = self._handed_out(TorchRunner(stage, module, device, narrow, self.synchronize, stream))
        if stage not in integer or package.root is None:
            # A checkpoint's in-memory package carries no vectors (nor graphs to fall back on).
            return runner
        return guard_integer_runner(runner, package, stage, device=str(device), identity=torch_identity(device),
                                    fallback=lambda: self._exact_cpu().load(package, stage))

    def _exact_cpu(self) -> Backend:
        """ONNX Runtime's CPU provider, where an integer stage runs if this device fails its known answers."""
        if self._fallback is None:
            from ckbd.runtime.ort_backend import OnnxRuntimeBackend

            self._fallback = OnnxRuntimeBackend("cpu")
        return self._fallback

    def close(self) -> None:
        super().close()
        self._bound = None
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        if self.stream is not None:
            self.stream.synchronize()  # nothing queued may still read what is freed
            torch.cuda.empty_cache()  # the closed runners' tensors go back to the device

    def _model(self) -> CheckerboardModel:
        if self.model is None:
            source = default_checkpoint() if self._source is None else self._source
            if isinstance(source, (str, Path)):
                from ckbd.models.checkpoint import load_model

                source = load_model(Path(source))
            self.model = require_checkerboard(source).eval()
        return self.model

    def _bind(self, package: ModelPackage) -> dict[str, nn.Module]:
        """Check once per package that it was exported from this model; the integer path's modules."""
        if self._bound is not None and self._bound[0] == package.fingerprint:
            return self._bound[1]
        which = "the shipped checkpoint" if self._source is None else str(self._source)
        check_exported_from(self._model(), package, which,
                            "give the torch backend the checkpoint it was exported from "
                            "(a checkpoint alone runs with --model CHECKPOINT on the float path)")
        spec = package.integer_params
        # The integer path's three stages in float32 GEMM form: exact on every device, like the ONNX graphs.
        integer = gemm_stage_modules(spec) if spec is not None else {}
        self._bound = (package.fingerprint, integer)
        return integer


def checkpoint_package(
    checkpoint_or_model: HyperpriorModel | Path | str,
    integer_params: IntegerParams | Path | None = None,
    **backend_options: object,
) -> tuple[ModelPackage, TorchBackend]:
    """An in-memory package of a checkpoint (no export) and the torch backend that runs it.

    The package has no graphs (``opset`` 0) but the same fingerprint as an export of the same
    weights. ``integer_params`` (a spec, its ``entropy_params.npz``, or a model directory holding
    one) selects the integer path of that export: then streams are interchangeable with it exactly.
    ``backend_options`` go to :class:`TorchBackend` (device, precision, ...).
    """
    spec = load_integer_params(integer_params)
    if isinstance(checkpoint_or_model, (str, Path)):
        from ckbd.models.checkpoint import load_model

        model = load_model(Path(checkpoint_or_model))
    else:
        model = checkpoint_or_model
    manifest, y_tables, z_tables = build_package(model, integer_params=spec)
    return ModelPackage(manifest, y_tables, z_tables, spec=spec), TorchBackend(model, **backend_options)  # type: ignore[arg-type]


def torch_identity(device: torch.device) -> dict[str, str] | None:
    """What the GEMM-form stages' results depend on besides the model (the self-check's cache key)."""
    found = {"backend": "torch-gemm", "torch": torch.__version__, "device": device.type}
    if device.type != "cuda":
        return found
    driver = cuda_identity(device.index or 0)
    if driver is None:
        return None
    return {**found, **driver, "cuda_runtime": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version())}


def load_integer_params(source: IntegerParams | Path | str | None) -> IntegerParams | None:
    """A spec from itself, its file, or the model directory that holds it (None: the float path)."""
    if source is None or isinstance(source, IntegerParams):
        return source
    path = Path(source)
    return IntegerParams.load(path / INTEGER_PARAMS_NAME if path.is_dir() else path)


def open_reference(cls: type[C], checkpoint_or_model: HyperpriorModel | Path | str,
                   integer_params: IntegerParams | Path | None = None, memory: MemoryBudget | None = None,
                   coder_threads: int = 0, **backend_options: object) -> C:
    """An :class:`~ckbd.runtime.codec.Encoder` or ``Decoder`` (``cls``) running a checkpoint on torch,
    without an export (its package built in memory); ``backend_options`` go to :class:`TorchBackend`."""
    package, backend = checkpoint_package(checkpoint_or_model, integer_params, **backend_options)
    return cls.open(package, backend, owns_backend=True, memory=memory,  # type: ignore[attr-defined,no-any-return]
                    coder_threads=coder_threads)

