"""Fake INT8 quantisation of a synthesis transform in torch, the arithmetic the Q/DQ graph will run.

Quantisation-aware fine-tuning (:mod:`ckbd.calibration.fine_tune`) trains the float weights with
the int8 rounding in the forward pass, so the weights move to values that survive it. The rounding
mirrors :mod:`ckbd.calibration.quantize`:

* weights: symmetric int8 in [-127, 127], one scale per output channel (axis 0 of a Conv2d
  weight, axis 1 of a ConvTranspose2d weight);
* activations into and out of each quantised convolution: one range per tensor, tracked as a
  running min/max, as asymmetric uint8 (``cpu`` target) or symmetric int8 (``tensorrt``);
* left float, as in the Q/DQ graph: the convolution that writes the image, and the GDN/IGDN norm
  convolutions (they are not ``nn.Conv2d`` modules here, so nothing wraps them).

Gradients pass the rounding straight through (torch's fake-quantize ops), clipped outside the range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_QMAX = 127
#: Weight of the newest batch in the running activation range (an exponential moving average).
RANGE_MOMENTUM = 0.05


class RangeFakeQuant(nn.Module):
    """Fake-quantises a tensor with a running per-tensor range (updated in training mode only)."""

    def __init__(self, symmetric: bool) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._observe(x.detach())
        low, high = float(self.low), float(self.high)
        if self.symmetric:
            bound = max(abs(low), abs(high), 1e-8)
            return torch.fake_quantize_per_tensor_affine(x, bound / 127.0, 0, -127, 127)
        low, high = min(low, 0.0), max(high, 0.0)  # zero must be exact (padding, ReLU-like zeros)
        scale = max(high - low, 1e-8) / 255.0
        zero_point = int(min(255, max(0, round(-low / scale))))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    def _observe(self, x: Tensor) -> None:
        low, high = x.min(), x.max()
        if not bool(self.seen):
            self.low.copy_(low)
            self.high.copy_(high)
            self.seen.fill_(True)
        else:
            self.low.lerp_(low, RANGE_MOMENTUM)
            self.high.lerp_(high, RANGE_MOMENTUM)


def fake_quant_weight(weight: Tensor, axis: int) -> Tensor:
    """Per-channel symmetric int8 rounding of a conv weight along ``axis`` (straight-through)."""
    reduce = [d for d in range(weight.dim()) if d != axis]
    scale = weight.detach().abs().amax(dim=reduce).clamp_min(1e-12) / WEIGHT_QMAX
    zero = torch.zeros(scale.shape, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, axis, -WEIGHT_QMAX, WEIGHT_QMAX)


class FakeQuantConv(nn.Module):
    """A Conv2d or ConvTranspose2d run with int8-rounded inputs, weights and outputs."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, symmetric: bool) -> None:
        super().__init__()
        self.conv = conv
        self.input_quant = RangeFakeQuant(symmetric)
        self.output_quant = RangeFakeQuant(symmetric)

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        x = self.input_quant(x)
        if isinstance(conv, nn.ConvTranspose2d):
            weight = fake_quant_weight(conv.weight, axis=1)
            y = F.conv_transpose2d(x, weight, conv.bias, conv.stride, conv.padding, conv.output_padding,  # type: ignore[arg-type]
                                   conv.groups, conv.dilation)  # type: ignore[arg-type]
        else:
            y = conv._conv_forward(x, fake_quant_weight(conv.weight, axis=0), conv.bias)
        return self.output_quant(y)


def quantised_convs(transform: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, conv) of every convolution the Q/DQ graph quantises: all but the last.

    The last convolution of a synthesis transform writes the image and stays float
    (:func:`ckbd.calibration.qdq_graph.image_side_convs` finds the same layer in the graph).
    """
    found = [(parent, name, child) for parent in transform.modules() for name, child in parent.named_children()
             if type(child) in (nn.Conv2d, nn.ConvTranspose2d)]
    return found[:-1]


def insert_fake_quant(transform: nn.Module, symmetric: bool) -> list[FakeQuantConv]:
    """Wrap the quantised convolutions of ``transform`` in place; returns the wrappers."""
    wrappers = []
    for parent, name, conv in quantised_convs(transform):
        wrapper = FakeQuantConv(conv, symmetric)  # type: ignore[arg-type]
        setattr(parent, name, wrapper)
        wrappers.append(wrapper)
    return wrappers


def remove_fake_quant(transform: nn.Module) -> None:
    """Put the (trained) convolutions back in place of their wrappers."""
    for parent in list(transform.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantConv):
                setattr(parent, name, child.conv)
