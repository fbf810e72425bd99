"""The torch reference backend: the plain stage modules behind the runtime's Backend interface.

It runs the model's own, un-rewritten computation, so it is what the exported graphs are checked
against, and it lets the codec encode and decode with a checkpoint directly (same manifest and
fingerprint as its ONNX export). Registered as ``torch`` in the backend registry; this module
imports torch at its top, so the registry imports it only when a torch backend is created. On the integer entropy-parameter path its streams and the ONNX
export's decode on each other bit-exactly; on the float path only up to float differences, which
can make a stream undecodable (docs/DETERMINISM.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ckbd.errors import CkbdError, ModelError
from ckbd.export.integer_stages import integer_stage_modules
from ckbd.export.model_package import build_package, check_exported_from
from ckbd.export.stage_modules import (
    check_stages,
    plain_stage_modules,
    require_checkerboard,
)
from ckbd.models.architectures import CheckerboardModel, HyperpriorModel
from ckbd.runtime.backend import ClosingBackend, Runner, Tensor, to_host
from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams
from ckbd.runtime.package import ModelPackage, default_checkpoint
from ckbd.runtime.stages import STAGE_IO, TensorSpec

C = TypeVar("C")

_NUMPY_TYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


class TorchRunner:
    """One stage module run under ``torch.inference_mode()`` on numpy arrays, on one device."""

    def __init__(self, stage: str, module: nn.Module, device: str = "cpu") -> None:
        self.stage = stage
        self.device = torch.device(device)
        self._module: nn.Module | None = module.eval().to(self.device)
        self.inputs, self.outputs = STAGE_IO[stage]

    def _feed(self, feeds: Mapping[str, Tensor], spec: TensorSpec) -> torch.Tensor:
        if spec.name not in feeds:
            raise ModelError(f"stage {self.stage} needs the input '{spec.name}'")
        array = np.ascontiguousarray(to_host(feeds[spec.name]), dtype=_NUMPY_TYPES[spec.dtype])
        return torch.from_numpy(array).to(self.device)

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Run the stage; ``keep`` is ignored (everything lives on the host)."""
        if self._module is None:
            raise CkbdError(f"the {self.stage} runner was closed")
        args = [self._feed(feeds, spec) for spec in self.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        results = result if isinstance(result, tuple) else (result,)
        return {spec.name: out.cpu().numpy().copy() for spec, out in zip(self.outputs, results)}

    def close(self) -> None:
        self._module = None


class TorchBackend(ClosingBackend):
    """:class:`~ckbd.runtime.backend.Backend` running a checkpoint's own modules for a package.

    ``checkpoint`` is a checkerboard model, its checkpoint file, or None for the shipped checkpoint. The
    first :meth:`load` checks that the package was exported from it (same fingerprint on the same
    entropy-parameter path); graph files are never read. ``device`` (e.g. ``"cuda"``) is where the
    stages run, except ``cpu_stages``, which stay on the CPU (a GPU check keeps the index-deciding
    stages of an integer-path model there).
    """

    name = "torch"

    def __init__(self, checkpoint: HyperpriorModel | Path | str | None = None, device: str = "cpu",
                 cpu_stages: Collection[str] = (), threads: int = 0, precision: str = "fp32") -> None:
        if precision != "fp32":
            raise ModelError(f"the torch backend runs the checkpoint in fp32, not {precision}")
        if threads > 0:
            torch.set_num_threads(threads)
        self._source = checkpoint
        self.model: CheckerboardModel | None = None
        if isinstance(checkpoint, HyperpriorModel):
            self.model = require_checkerboard(checkpoint).eval()
        self.device = device
        self.cpu_stages = frozenset(cpu_stages)
        self._runners: list[Runner] = []
        self._bound: tuple[str, dict[str, nn.Module]] | None = None  # (fingerprint, integer modules)

    def load(self, package: ModelPackage | Path, stage: str) -> TorchRunner:
        package = ModelPackage.of(package)
        (stage,) = check_stages((stage,))
        integer = self._bind(package)
        if stage in integer:
            module = integer[stage]
        else:
            module = plain_stage_modules(self._model(), package.manifest.scale_table, (stage,))[stage]
        return self._handed_out(TorchRunner(stage, module, "cpu" if stage in self.cpu_stages else self.device))

    def close(self) -> None:
        super().close()
        self._bound = None
        if self.device.startswith("cuda"):
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
        # The integer path's three stages run the spec in float64: exact like the ONNX graphs.
        integer = integer_stage_modules(spec, torch.float64) if spec is not None else {}
        self._bound = (package.fingerprint, integer)
        return integer


def checkpoint_package(
    checkpoint_or_model: HyperpriorModel | Path | str,
    integer_params: IntegerParams | Path | None = None,
) -> tuple[ModelPackage, TorchBackend]:
    """An in-memory package of a checkpoint (no export) and the torch backend that runs it.

    The package has no graphs (``opset`` 0) but the same fingerprint as an export of the same
    weights. ``integer_params`` (a spec, its ``entropy_params.npz``, or a model directory holding
    one) selects the integer path of that export: then streams are interchangeable with it exactly.
    """
    spec = load_integer_params(integer_params)
    if isinstance(checkpoint_or_model, (str, Path)):
        from ckbd.models.checkpoint import load_model

        model = load_model(Path(checkpoint_or_model))
    else:
        model = checkpoint_or_model
    manifest, y_tables, z_tables = build_package(model, integer_params=spec)
    return ModelPackage(manifest, y_tables, z_tables, spec=spec), TorchBackend(model)


def load_integer_params(source: IntegerParams | Path | str | None) -> IntegerParams | None:
    """A spec from itself, its file, or the model directory that holds it (None: the float path)."""
    if source is None or isinstance(source, IntegerParams):
        return source
    path = Path(source)
    return IntegerParams.load(path / INTEGER_PARAMS_NAME if path.is_dir() else path)


def open_reference(cls: type[C], checkpoint_or_model: HyperpriorModel | Path | str,
                   integer_params: IntegerParams | Path | None = None) -> C:
    """An :class:`~ckbd.runtime.codec.Encoder` or ``Decoder`` (``cls``) running a checkpoint on torch,
    without an export (its package built in memory)."""
    from ckbd.runtime.model import CodecModel

    package, backend = checkpoint_package(checkpoint_or_model, integer_params)
    stages = cls.STAGES  # type: ignore[attr-defined]
    return cls(CodecModel.open(package, backend, stages=stages, owns_backend=True))  # type: ignore[call-arg]

