"""The random-mask model of He et al. 2021 (§4.1): one network that can evaluate any context pattern.

Minnen 2018 whose 5x5 context convolution (M -> 2M) is multiplied by a binary mask over its
25 taps. Training draws a fresh mask for every step (one per batch: each of the 24 off-centre
taps is 1 with probability 0.5, the centre is always 0), so the entropy parameters learn to
work with any subset of neighbours; a study then feeds a chosen mask and reads off the rate.

The mask is applied at every position at once, which no real decoder can do for most patterns
(a decoder only knows already-decoded neighbours): the study measures how much each neighbour
*could* save, as in the paper, not a codec. The architecture is for training and that study
only; export rejects it (it is not a checkerboard model) and the runtime has no id for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ckbd.models.architectures import ContextModel, ForwardResult
from ckbd.models.config import ModelConfig
from ckbd.models.entropy import add_noise, gaussian_likelihood, ste_round
from ckbd.models.transforms import minnen_transforms

KERNEL = 5
CENTRE = KERNEL // 2


def sample_context_mask(generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
    """A (5, 5) float mask: every off-centre tap 1 with probability 0.5, the centre 0."""
    mask = (torch.rand(KERNEL, KERNEL, generator=generator) < 0.5).float()
    mask[CENTRE, CENTRE] = 0.0
    return mask.to(device) if device is not None else mask


class RandomMaskModel(ContextModel):
    """``mbt2018-random-mask``: Minnen 2018 with a context mask drawn per training step.

    ``eval_mask`` (5x5, not saved; all zeros, i.e. context-free, after loading) is the pattern
    an eval-mode forward uses; :meth:`params_with_mask` takes any mask explicitly.

    The evaluation latent is ``round(y)``, not rounding around the predicted means as the
    checkerboard model does: the means depend on the mask, so rounding around them would give
    every mask different latents and a different distortion. With ``round(y)`` all masks code
    the same latents and the rate difference is the context's alone, as the paper's study
    requires. Training matches it: the synthesis sees ``ste_round(y)`` once STE is on.
    """

    eval_mask: Tensor

    def __init__(self, config: ModelConfig, transforms: dict[str, nn.Module]) -> None:
        super().__init__(config, transforms, torch.ones(KERNEL, KERNEL))
        self.register_buffer("eval_mask", torch.zeros(KERNEL, KERNEL), persistent=False)
        self.last_mask: Tensor | None = None  # the mask of the latest training forward (tests, logs)

    def context(self, y_hat: Tensor, mask: Tensor) -> Tensor:
        """The context features with the kernel's taps multiplied by ``mask`` (5x5)."""
        conv = self.context_prediction
        weight = conv.weight * mask.to(conv.weight)
        return F.conv2d(y_hat, weight, conv.bias, padding=CENTRE)

    def params_with_mask(self, y_hat: Tensor, hyper: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) for every position with the context pattern ``mask``."""
        return self.params_from(hyper, self.context(y_hat, mask))

    def y_params(self, y_tilde: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:
            self.last_mask = sample_context_mask(device=y_tilde.device)
            return self.params_with_mask(y_tilde, hyper, self.last_mask)
        return self.params_with_mask(y_tilde, hyper, self.eval_mask)

    def latents(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eval-mode (y_hat = round(y), hyper features, z likelihoods): mask-independent."""
        y = self.g_a(x)
        z_hat, z_likelihoods = self.entropy_bottleneck(self.h_a(y))
        return torch.round(y), self.h_s(z_hat), z_likelihoods

    def forward(self, x: Tensor) -> ForwardResult:
        if not self.training:
            y_hat, hyper, z_likelihoods = self.latents(x)
            scales, means = self.y_params(y_hat, hyper)
            return ForwardResult(self.g_s(y_hat), gaussian_likelihood(y_hat, scales, means), z_likelihoods)
        y = self.g_a(x)
        z_hat, z_likelihoods = self.entropy_bottleneck(self.h_a(y))
        y_tilde = add_noise(y)
        scales, means = self.y_params(y_tilde, self.h_s(z_hat))
        y_synth = ste_round(y) if self.ste_synthesis else y_tilde
        return ForwardResult(self.g_s(y_synth), gaussian_likelihood(y_tilde, scales, means), z_likelihoods)


def mbt2018_random_mask(config: ModelConfig) -> RandomMaskModel:
    return RandomMaskModel(config, minnen_transforms(config.N, config.M))
