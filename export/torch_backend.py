"""The torch reference backend: the plain stage modules behind the runtime's Backend interface.

It runs the model's own, un-rewritten computation, so it is what the exported graphs are checked
against, and it lets the codec encode and decode with a checkpoint directly (same manifest and
fingerprint as its ONNX export). On the integer entropy-parameter path its streams and the ONNX
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

from ckbd.errors import ModelError, ModelMismatchError
from ckbd.export.integer_stages import integer_stage_modules
from ckbd.export.model_package import build_package
from ckbd.export.stage_modules import (
    check_stages,
    plain_stage_modules,
    require_checkerboard,
)
from ckbd.models.architectures import HyperpriorModel
from ckbd.runtime.backend import Tensor, to_host
from ckbd.runtime.entropy_tables import EntropyTables, default_scale_table
from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.stages import STAGE_IO, TensorSpec

C = TypeVar("C")

_NUMPY_TYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


class TorchRunner:
    """One stage module run under ``torch.inference_mode()`` on numpy arrays, on one device."""

    def __init__(self, stage: str, module: nn.Module, device: str = "cpu") -> None:
        self.stage = stage
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.inputs, self.outputs = STAGE_IO[stage]

    def _feed(self, feeds: Mapping[str, Tensor], spec: TensorSpec) -> torch.Tensor:
        if spec.name not in feeds:
            raise ModelError(f"stage {self.stage} needs the input '{spec.name}'")
        array = np.ascontiguousarray(to_host(feeds[spec.name]), dtype=_NUMPY_TYPES[spec.dtype])
        return torch.from_numpy(array).to(self.device)

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Run the stage; ``keep`` is ignored (everything lives on the host)."""
        args = [self._feed(feeds, spec) for spec in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        results = result if isinstance(result, tuple) else (result,)
        return {spec.name: out.cpu().numpy().copy() for spec, out in zip(self.outputs, results)}


class TorchBackend:
    """:class:`~ckbd.runtime.backend.Backend` over an in-memory model; ``model_dir`` is ignored.

    ``device`` (e.g. ``"cuda"``) is where the stages run, except ``cpu_stages``, which stay on the
    CPU (a GPU check keeps the index-deciding stages of an integer-path model there).
    """

    name = "torch"

    def __init__(self, model: HyperpriorModel, scale_table: np.ndarray | None = None, device: str = "cpu",
                 cpu_stages: Collection[str] = (), integer_params: IntegerParams | None = None) -> None:
        self.model = require_checkerboard(model).eval()
        self.integer_params = integer_params
        # The integer path's three stages run the spec in float64: exact like the ONNX graphs.
        self._integer = integer_stage_modules(integer_params, torch.float64) if integer_params else {}
        self.scale_table = default_scale_table() if scale_table is None else np.asarray(scale_table, np.float32)
        self.device = device
        self.cpu_stages = frozenset(cpu_stages)
        self._modules: dict[str, nn.Module] = {}

    def load(self, model_dir: Path | None, stage: str) -> TorchRunner:
        (stage,) = check_stages((stage,))
        if stage in self._integer:
            self._modules[stage] = self._integer[stage]
        if stage not in self._modules:
            self._modules.update(plain_stage_modules(self.model, self.scale_table, (stage,)))
        return TorchRunner(stage, self._modules[stage], "cpu" if stage in self.cpu_stages else self.device)


def reference_package(
    checkpoint_or_model: HyperpriorModel | Path | str,
    integer_params: IntegerParams | Path | None = None,
) -> tuple[Manifest, EntropyTables, EntropyTables, TorchBackend]:
    """(manifest, y tables, z tables, backend) to code with a checkpoint on torch, no export.

    The manifest has no graphs (``opset`` 0) but the same fingerprint as an export of the same
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
    return manifest, y_tables, z_tables, TorchBackend(model, np.asarray(manifest.scale_table, np.float32),
                                                      integer_params=spec)


def reference_of_export(
    checkpoint: Path | str, model_dir: Path | str, hint: str = "",
) -> tuple[Manifest, EntropyTables, EntropyTables, TorchBackend]:
    """:func:`reference_package` of the checkpoint an exported directory was made from, on the same
    entropy-parameter path; a checkpoint the directory was not exported from is refused (``hint``
    says what to do instead)."""
    exported = Manifest.load(Path(model_dir))
    spec = load_integer_params(model_dir) if exported.integer_params is not None else None
    package = reference_package(checkpoint, spec)
    if package[0].fingerprint != exported.fingerprint:
        raise ModelMismatchError(f"{model_dir} was not exported from {checkpoint}{hint}")
    return package


def load_integer_params(source: IntegerParams | Path | str | None) -> IntegerParams | None:
    """A spec from itself, its file, or the model directory that holds it (None: the float path)."""
    if source is None or isinstance(source, IntegerParams):
        return source
    path = Path(source)
    return IntegerParams.load(path / INTEGER_PARAMS_NAME if path.is_dir() else path)


def open_reference(cls: type[C], checkpoint_or_model: HyperpriorModel | Path | str,
                   integer_params: IntegerParams | Path | None = None) -> C:
    """An :class:`~ckbd.runtime.codec.Encoder` or ``Decoder`` (``cls``) running a checkpoint on torch."""
    return _open(cls, reference_package(checkpoint_or_model, integer_params))


def open_reference_of_export(cls: type[C], checkpoint: Path | str, model_dir: Path | str, hint: str = "") -> C:
    """:func:`open_reference` on the path of an exported directory (see :func:`reference_of_export`)."""
    return _open(cls, reference_of_export(checkpoint, model_dir, hint))


def _open(cls: type[C], package: tuple[Manifest, EntropyTables, EntropyTables, TorchBackend]) -> C:
    from ckbd.runtime.model import CodecModel

    manifest, y_tables, z_tables, backend = package
    runners = {stage: backend.load(None, stage) for stage in cls.STAGES}  # type: ignore[attr-defined]
    return cls(CodecModel.from_parts(manifest, y_tables, z_tables, runners, "torch"))  # type: ignore[call-arg]
