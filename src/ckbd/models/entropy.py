"""Differentiable entropy models: the factorized prior for z and the Gaussian conditional for y.

These compute likelihoods for training and the discrete distributions exported for coding.
The coding itself lives in the torch-free runtime (``ckbd.runtime.coder``), which is why this
module hands out plain numpy pmfs rather than coding anything.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11


def add_noise(x: Tensor) -> Tensor:
    """Training proxy for rounding: additive uniform noise in [-0.5, 0.5)."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class EntropyBottleneck(nn.Module):
    """Non-parametric factorized density per channel (Ballé et al. 2018, appendix 6.1)."""

    target: Tensor

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9) -> None:
        super().__init__()
        self.channels = channels
        self.tail_mass = tail_mass
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self._matrices = nn.ParameterList()
        self._biases = nn.ParameterList()
        self._factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self._matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self._biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self._factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)

    def _logits_cumulative(self, x: Tensor, stop_gradient: bool = False) -> Tensor:
        """x: (C, 1, n) -> logits of the cumulative density at x, per channel."""
        logits = x
        for i, matrix in enumerate(self._matrices):
            bias = self._biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self._factors):
                factor = self._factors[i].detach() if stop_gradient else self._factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _bin_mass(self, values: Tensor) -> Tensor:
        """values: (C, 1, n) -> probability of the unit bin around each value."""
        lower = self._logits_cumulative(values - 0.5)
        upper = self._logits_cumulative(values + 0.5)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def medians(self) -> Tensor:
        return self.quantiles[:, 0, 1]

    def likelihood(self, values: Tensor) -> Tensor:
        """Probability mass of the unit bin around each value; values: (B, C, H, W)."""
        c = values.shape[1]
        flat = values.transpose(0, 1).reshape(c, 1, -1)
        lik = self._bin_mass(flat).reshape(c, values.shape[0], *values.shape[2:]).transpose(0, 1)
        return torch.clamp(lik, min=LIKELIHOOD_BOUND)

    def quantize(self, z: Tensor, training: bool) -> Tensor:
        """Noise in training; otherwise rounding around the per-channel median (as coded)."""
        if training:
            return add_noise(z)
        medians = self.medians().reshape(1, -1, 1, 1)
        return torch.round(z - medians) + medians

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z_hat = self.quantize(z, self.training)
        return z_hat, self.likelihood(z_hat)

    def aux_loss(self) -> Tensor:
        """Fits ``quantiles`` to the tails so the coding range covers all but ``tail_mass``."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def discrete_pmfs(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-channel pmfs over integer offsets from the median, and each pmf's first offset.

        Symbols coded for z are ``round(z - median)``; entry e of channel c's pmf is the symbol
        ``offsets[c] + e``.
        """
        medians = self.medians()
        lower = torch.ceil(medians - self.quantiles[:, 0, 0]).clamp(min=0).long()
        upper = torch.ceil(self.quantiles[:, 0, 2] - medians).clamp(min=0).long()
        length = int((lower + upper).max()) + 1
        symbols = torch.arange(length, dtype=torch.float32).unsqueeze(0) - lower.unsqueeze(1)
        mass = self._bin_mass((symbols + medians.unsqueeze(1)).unsqueeze(1)).squeeze(1)
        pmfs = [mass[c, : int(lower[c] + upper[c]) + 1].double().numpy() for c in range(self.channels)]
        return pmfs, (-lower).to(torch.int32).numpy()


def gaussian_likelihood(values: Tensor, scales: Tensor, means: Tensor) -> Tensor:
    """Mass of N(means, scales) on the unit bin around ``values`` (scales bounded below)."""
    scales = torch.clamp(scales, min=SCALE_BOUND)
    v = torch.abs(values - means)
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scales * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scales * math.sqrt(2)))
    return torch.clamp(upper - lower, min=LIKELIHOOD_BOUND)


def scale_indexes(scales: Tensor, scale_table: Tensor) -> Tensor:
    """Table bin of each predicted scale: how many of table[:-1] it exceeds (int32).

    This exact rule runs inside the exported parameter graphs, so the encoder and decoder derive
    the same integer index from the same float scale.
    """
    thresholds = scale_table[:-1].reshape(-1, *([1] * scales.dim()))
    return (scales.unsqueeze(0) > thresholds).sum(dim=0).to(torch.int32)
