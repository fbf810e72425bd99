"""The torch reference backend: the plain stage modules behind the runtime's Backend interface.

It runs the model's own, un-rewritten computation, so it is what the exported graphs are checked
against, and it lets the codec encode and decode with a checkpoint directly (same manifest and
fingerprint as its ONNX export, hence interchangeable bitstreams up to float differences).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ckbd.errors import ModelError
from ckbd.export.model_package import build_package
from ckbd.export.stage_modules import (
    check_stages,
    plain_stage_modules,
    require_checkerboard,
)
from ckbd.models.architectures import HyperpriorModel
from ckbd.runtime.backend import Tensor, to_host
from ckbd.runtime.entropy_tables import EntropyTables, default_scale_table
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.stages import STAGE_IO, TensorSpec

C = TypeVar("C")

_NUMPY_TYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


class TorchRunner:
    """One stage module run under ``torch.inference_mode()`` on numpy arrays."""

    def __init__(self, stage: str, module: nn.Module) -> None:
        self.stage = stage
        self.module = module.eval()
        self.inputs, self.outputs = STAGE_IO[stage]

    def _feed(self, feeds: Mapping[str, Tensor], spec: TensorSpec) -> torch.Tensor:
        if spec.name not in feeds:
            raise ModelError(f"stage {self.stage} needs the input '{spec.name}'")
        array = np.ascontiguousarray(to_host(feeds[spec.name]), dtype=_NUMPY_TYPES[spec.dtype])
        return torch.from_numpy(array)

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        """Run the stage; ``keep`` is ignored (everything lives on the host)."""
        args = [self._feed(feeds, spec) for spec in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        results = result if isinstance(result, tuple) else (result,)
        return {spec.name: out.numpy().copy() for spec, out in zip(self.outputs, results)}


class TorchBackend:
    """:class:`~ckbd.runtime.backend.Backend` over an in-memory model; ``model_dir`` is ignored."""

    name = "torch"

    def __init__(self, model: HyperpriorModel, scale_table: np.ndarray | None = None) -> None:
        self.model = require_checkerboard(model).eval()
        self.scale_table = default_scale_table() if scale_table is None else np.asarray(scale_table, np.float32)
        self._modules: dict[str, nn.Module] = {}

    def load(self, model_dir: Path | None, stage: str) -> TorchRunner:
        (stage,) = check_stages((stage,))
        if stage not in self._modules:
            self._modules.update(plain_stage_modules(self.model, self.scale_table, (stage,)))
        return TorchRunner(stage, self._modules[stage])


def reference_package(
    checkpoint_or_model: HyperpriorModel | Path | str,
) -> tuple[Manifest, EntropyTables, EntropyTables, TorchBackend]:
    """(manifest, y tables, z tables, backend) to code with a checkpoint on torch, no export.

    The manifest has no graphs (``opset`` 0) but the same fingerprint as an export of the same
    weights.
    """
    if isinstance(checkpoint_or_model, (str, Path)):
        from ckbd.models.checkpoint import load_model

        model = load_model(Path(checkpoint_or_model))
    else:
        model = checkpoint_or_model
    manifest, y_tables, z_tables = build_package(model)
    return manifest, y_tables, z_tables, TorchBackend(model, np.asarray(manifest.scale_table, np.float32))


def open_reference(cls: type[C], checkpoint_or_model: HyperpriorModel | Path | str) -> C:
    """An :class:`~ckbd.runtime.codec.Encoder` or ``Decoder`` (``cls``) running a checkpoint on torch."""
    from ckbd.runtime.model import CodecModel

    manifest, y_tables, z_tables, backend = reference_package(checkpoint_or_model)
    runners = {stage: backend.load(None, stage) for stage in cls.STAGES}  # type: ignore[attr-defined]
    return cls(CodecModel.from_parts(manifest, y_tables, z_tables, runners, "torch"))  # type: ignore[call-arg]
