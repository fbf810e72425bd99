"""One ``nn.Module`` per stage of the contract in :mod:`ckbd.runtime.stages`.

Each stage module's ``forward`` takes exactly the stage's inputs, positionally in ``STAGE_IO``
order, and returns its outputs as a tuple in ``STAGE_IO`` order, so that exporting, the torch
reference backend and the parity tests all call the same thing the same way.

The stages do not reach into a :class:`~ckbd.models.architectures.CheckerboardModel` directly but
through a :class:`StageParts` module: :class:`PlainParts` delegates to the model's own methods (the
reference), and :mod:`ckbd.export.optimize` provides faster, equivalent parts for export. The
stage wiring (packing, rounding, dtypes, the scale-index rule) lives here once for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ckbd.errors import ModelError
from ckbd.models import checkerboard as cb
from ckbd.models.architectures import CheckerboardModel, HyperpriorModel
from ckbd.models.entropy import scale_indexes
from ckbd.runtime.stages import (
    ALL_STAGES,
    ANALYSIS,
    ANCHOR_PARAMS,
    HYPER_SYNTHESIS,
    LATENT_SYNTHESIS,
    NONANCHOR_PARAMS,
)

#: Architectures that follow the five-stage checkerboard contract.
CHECKERBOARD_ARCHS = ("mbt2018-ckbd", "cheng2020-ckbd")


def require_checkerboard(model: HyperpriorModel) -> CheckerboardModel:
    """The model as a checkerboard model, or a :class:`ModelError` that says why not."""
    arch = getattr(getattr(model, "config", None), "arch", type(model).__name__)
    if not isinstance(model, CheckerboardModel) or arch not in CHECKERBOARD_ARCHS:
        raise ModelError(
            f"'{arch}' cannot be exported: only checkerboard architectures "
            f"({', '.join(CHECKERBOARD_ARCHS)}) have the two-pass parameter stages the runtime "
            "decodes with; serial-context and mean-scale models are training baselines only"
        )
    return model


def scale_table_tensor(scale_table: Sequence[float] | np.ndarray | Tensor) -> Tensor:
    """The scale table as a 1-d float32 tensor (the precision the index rule is defined in)."""
    table = torch.as_tensor(np.asarray(scale_table, dtype=np.float32)).reshape(-1)
    if table.numel() < 2:
        raise ModelError("the scale table needs at least two scales")
    return table


class ScaleIndex(nn.Module):
    """Index of each scale into the table: how many of ``table[:-1]`` it exceeds.

    The rule of :func:`ckbd.models.entropy.scale_indexes` and of the runtime's
    ``scale_to_index``; one comparison per threshold (the straightforward form).
    """

    scale_table: Tensor

    def __init__(self, scale_table: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale_table", scale_table.clone())

    def forward(self, scales: Tensor) -> Tensor:
        return scale_indexes(scales, self.scale_table)


class StageParts(nn.Module):
    """The pieces of a checkerboard model that the five stages are wired from.

    ``parity`` names the anchor sub-lattice; ``medians`` (N,) are the z quantisation offsets.
    """

    parity: str
    medians: Tensor
    indexer: nn.Module

    def analysis(self, image: Tensor) -> Tensor:
        raise NotImplementedError

    def hyper_analysis(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def hyper_synthesis(self, z_hat: Tensor) -> Tensor:
        raise NotImplementedError

    def synthesis(self, y_hat: Tensor) -> Tensor:
        raise NotImplementedError

    def anchor_params(self, hyper_anchor: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def nonanchor_params(self, hyper_nonanchor: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class PlainParts(StageParts):
    """The reference: the model's own modules and methods, exactly as trained."""

    def __init__(self, model: CheckerboardModel, scale_table: Tensor) -> None:
        super().__init__()
        self.model = require_checkerboard(model)
        self.parity = model.parity
        self.register_buffer("medians", model.entropy_bottleneck.medians().detach().clone())
        self.indexer = ScaleIndex(scale_table)

    def analysis(self, image: Tensor) -> Tensor:
        return self.model.g_a(image)

    def hyper_analysis(self, y: Tensor) -> Tensor:
        return self.model.h_a(y)

    def hyper_synthesis(self, z_hat: Tensor) -> Tensor:
        return self.model.h_s(z_hat)

    def synthesis(self, y_hat: Tensor) -> Tensor:
        return self.model.g_s(y_hat)

    def anchor_params(self, hyper_anchor: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.anchor_params(hyper_anchor)

    def nonanchor_params(self, hyper_nonanchor: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.nonanchor_params(hyper_nonanchor, anchor_hat)


class _Stage(nn.Module):
    def __init__(self, parts: StageParts) -> None:
        super().__init__()
        self.parts = parts

    def _medians(self) -> Tensor:
        return self.parts.medians.reshape(1, -1, 1, 1)


class AnalysisStage(_Stage):
    """image (1,3,H,W) in [0,1] -> packed y halves and z symbols ``round(h_a(y) - medians)``."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y = self.parts.analysis(image)
        z = self.parts.hyper_analysis(y)
        z_symbols = torch.round(z - self._medians()).to(torch.int32)
        parity = self.parts.parity
        return cb.pack(y, "anchor", parity), cb.pack(y, "nonanchor", parity), z_symbols


class HyperSynthesisStage(_Stage):
    """z symbols -> hyper features ``h_s(z_symbols + medians)``."""

    def forward(self, z_symbols: Tensor) -> Tensor:
        return self.parts.hyper_synthesis(z_symbols.to(torch.float32) + self._medians())


class AnchorParamsStage(_Stage):
    """hyper -> (indexes, means) at the packed anchor positions only.

    The entropy-parameter network is 1x1 convolutions, so packing the hyper features first
    gives the same values at half the cost of running it everywhere and packing after.
    """

    def forward(self, hyper: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = self.parts.anchor_params(cb.pack(hyper, "anchor", self.parts.parity))
        return self.parts.indexer(scales), means


class NonAnchorParamsStage(_Stage):
    """(hyper, decoded anchors) -> (indexes, means) at the packed non-anchor positions."""

    def forward(self, hyper: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        hyper_nonanchor = cb.pack(hyper, "nonanchor", self.parts.parity)
        scales, means = self.parts.nonanchor_params(hyper_nonanchor, anchor_hat)
        return self.parts.indexer(scales), means


class LatentSynthesisStage(_Stage):
    """Packed decoded halves -> uint8 NHWC image ``round(clamp(g_s(y_hat), 0, 1) * 255)``."""

    def forward(self, anchor_hat: Tensor, nonanchor_hat: Tensor) -> Tensor:
        y_hat = cb.unpack(anchor_hat, nonanchor_hat, self.parts.parity)
        x = self.parts.synthesis(y_hat)
        pixels = torch.round(torch.clamp(x, 0.0, 1.0) * 255.0).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1)


STAGE_CLASSES: dict[str, type[_Stage]] = {
    ANALYSIS: AnalysisStage,
    HYPER_SYNTHESIS: HyperSynthesisStage,
    ANCHOR_PARAMS: AnchorParamsStage,
    NONANCHOR_PARAMS: NonAnchorParamsStage,
    LATENT_SYNTHESIS: LatentSynthesisStage,
}


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """Validate stage names (order preserved, duplicates dropped)."""
    unknown = [s for s in stages if s not in STAGE_CLASSES]
    if unknown:
        raise ModelError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(ALL_STAGES)}")
    return tuple(dict.fromkeys(stages))


def stage_modules(parts: StageParts, stages: Sequence[str] = ALL_STAGES) -> dict[str, nn.Module]:
    """Eval-mode stage modules over ``parts``, keyed by stage name."""
    return {name: STAGE_CLASSES[name](parts).eval() for name in check_stages(stages)}


def plain_stage_modules(
    model: HyperpriorModel, scale_table: Sequence[float] | np.ndarray | Tensor,
    stages: Sequence[str] = ALL_STAGES,
) -> dict[str, nn.Module]:
    """The reference stage modules: the model's own computation, scale table baked in."""
    parts = PlainParts(require_checkerboard(model), scale_table_tensor(scale_table))
    return stage_modules(parts, stages)
