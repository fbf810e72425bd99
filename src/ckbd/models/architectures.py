"""The codec models: checkerboard-context models and the two baselines the paper compares with.

Every model maps an image to (x_hat, likelihoods) for training. The checkerboard models also
expose the two parameter passes separately (:meth:`CheckerboardModel.anchor_params`,
:meth:`CheckerboardModel.nonanchor_params`) so the exported graphs and the torch reference
repeat exactly the computation the training forward approximates in one pass (paper eq. 11).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ckbd.models import checkerboard as cb
from ckbd.models.config import ModelConfig
from ckbd.models.entropy import EntropyBottleneck, add_noise, gaussian_likelihood, ste_round
from ckbd.models.layers import MaskedConv2d, checkerboard_kernel_mask, raster_kernel_mask
from ckbd.models.transforms import cheng_anchor_transforms, entropy_parameters, minnen_transforms


@dataclass
class ForwardResult:
    x_hat: Tensor
    y_likelihoods: Tensor
    z_likelihoods: Tensor


class HyperpriorModel(nn.Module):
    """Transforms, hyperprior and factorized bottleneck shared by all architectures.

    ``ste_synthesis`` feeds the synthesis the straight-through rounded latent instead of the
    noisy one (train with noise first: from a random start STE rounds latents to zero).
    """

    def __init__(self, config: ModelConfig, transforms: dict[str, nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.g_a, self.g_s = transforms["g_a"], transforms["g_s"]
        self.h_a, self.h_s = transforms["h_a"], transforms["h_s"]
        self.entropy_bottleneck = EntropyBottleneck(config.N, filters=config.eb_filters)
        self.ste_synthesis = False

    def y_params(self, y_tilde: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) for every position, computed in one pass for training."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> ForwardResult:
        y = self.g_a(x)
        z_hat, z_likelihoods = self.entropy_bottleneck(self.h_a(y))
        hyper = self.h_s(z_hat)
        y_tilde = add_noise(y) if self.training else self._round_with_means(y, hyper)
        scales, means = self.y_params(y_tilde, hyper)
        y_likelihoods = gaussian_likelihood(y_tilde, scales, means)
        # Evaluation: y_tilde is already the decoder's latent, so rate and distortion agree.
        y_synth = ste_round(y - means) + means if (self.training and self.ste_synthesis) else y_tilde
        return ForwardResult(self.g_s(y_synth), y_likelihoods, z_likelihoods)

    def _round_with_means(self, y: Tensor, hyper: Tensor) -> Tensor:
        """Evaluation-mode latent. Context models override this: their means depend on y_hat."""
        _, means = self.y_params(y, hyper)
        return torch.round(y - means) + means

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.aux_loss()


class MeanScaleHyperprior(HyperpriorModel):
    """``mbt2018-mean``: the hyperprior alone predicts means and scales (no context)."""

    def y_params(self, y_tilde: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = hyper.chunk(2, dim=1)
        return scales, means


class ContextModel(HyperpriorModel):
    """A context model: masked 5x5 conv M -> 2M over decoded latents + 1x1 entropy parameters."""

    def __init__(self, config: ModelConfig, transforms: dict[str, nn.Module], mask: Tensor) -> None:
        super().__init__(config, transforms)
        M = config.M
        self.context_prediction = MaskedConv2d(M, 2 * M, 5, padding=2, mask=mask)
        self.entropy_parameters = entropy_parameters(M)

    def params_from(self, hyper: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Entropy parameters from hyper features and context, concatenated in that order."""
        scales, means = self.entropy_parameters(torch.cat((hyper, ctx), dim=1)).chunk(2, dim=1)
        return scales, means


class SerialContextModel(ContextModel):
    """``mbt2018``: Minnen 2018 with the raster-scan context (decoded in H x W serial steps)."""

    def y_params(self, y_tilde: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        return self.params_from(hyper, self.context_prediction(y_tilde))

    def _round_with_means(self, y: Tensor, hyper: Tensor) -> Tensor:
        # Evaluation uses rounding without means for the context, as a serial decoder can only
        # know means after decoding; the exact serial decode lives in the reference codec.
        return torch.round(y)


class CheckerboardModel(ContextModel):
    """Checkerboard context (He et al. 2021): anchors from the hyperprior, then non-anchors."""

    def __init__(self, config: ModelConfig, transforms: dict[str, nn.Module]) -> None:
        super().__init__(config, transforms, checkerboard_kernel_mask(5))

    @property
    def parity(self) -> str:
        return self.config.anchor_parity

    def y_params(self, y_tilde: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        """One-pass parameters (eq. 11): context from anchors only, zeroed (bias too) at anchors."""
        mask = cb.anchor_mask(y_tilde.shape[2], y_tilde.shape[3], self.parity, y_tilde.device)
        ctx = self.context_prediction(y_tilde * mask) * (1 - mask)
        return self.params_from(hyper, ctx)

    def anchor_params(self, hyper_anchor: Tensor) -> tuple[Tensor, Tensor]:
        """First pass, on packed anchor positions: the context is all zeros."""
        return self.params_from(hyper_anchor, torch.zeros_like(hyper_anchor))

    def nonanchor_context(self, anchor_hat: Tensor) -> Tensor:
        """Context features at the packed non-anchor positions, from the packed decoded anchors."""
        y_anchors = cb.unpack(anchor_hat, torch.zeros_like(anchor_hat), self.parity)
        return cb.pack(self.context_prediction(y_anchors), "nonanchor", self.parity)

    def nonanchor_params(self, hyper_nonanchor: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.params_from(hyper_nonanchor, self.nonanchor_context(anchor_hat))

    def _round_with_means(self, y: Tensor, hyper: Tensor) -> Tensor:
        """The two-pass evaluation latent: what the real decoder reconstructs."""
        a_scales_means = self.anchor_params(cb.pack(hyper, "anchor", self.parity))
        anchor_hat = torch.round(cb.pack(y, "anchor", self.parity) - a_scales_means[1]) + a_scales_means[1]
        _, n_means = self.nonanchor_params(cb.pack(hyper, "nonanchor", self.parity), anchor_hat)
        nonanchor_hat = torch.round(cb.pack(y, "nonanchor", self.parity) - n_means) + n_means
        return cb.unpack(anchor_hat, nonanchor_hat, self.parity)


def mbt2018_checkerboard(config: ModelConfig) -> CheckerboardModel:
    return CheckerboardModel(config, minnen_transforms(config.N, config.M))


def cheng2020_checkerboard(config: ModelConfig) -> CheckerboardModel:
    return CheckerboardModel(config, cheng_anchor_transforms(config.N))


def mbt2018_serial(config: ModelConfig) -> SerialContextModel:
    return SerialContextModel(config, minnen_transforms(config.N, config.M), raster_kernel_mask(5))


def mbt2018_mean(config: ModelConfig) -> MeanScaleHyperprior:
    return MeanScaleHyperprior(config, minnen_transforms(config.N, config.M))
