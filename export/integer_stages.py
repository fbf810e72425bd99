"""The integer entropy-parameter stages as torch modules: the exported graphs and the torch backend.

Each module evaluates an :class:`~ckbd.runtime.intparams.IntegerParams` spec with ordinary float
convolutions whose weights, biases and inputs are integers. The spec bounds every output's
``sum(|w|) * max|x| + |b|`` below 2**23, so every partial sum is an integer that float32 holds
exactly, whatever the summation order, blocking or thread count: the float result *is* the
integer result. Rescaling multiplies by powers of two (exact) and floors; saturation is a clamp.
ONNX Runtime may fold the per-channel ``Add``/``Mul`` after a convolution into its bias and
weights; both are exact for power-of-two scales, so its optimisation levels cannot change a value.

Exported in float32 (``dtype=torch.float32``). The torch backend runs copies of the same float32
modules with every convolution as an explicit matrix product (:mod:`ckbd.export.gemm_stages`), so
that no device's convolution algorithm (Winograd, FFT, TF32) can round a partial sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ckbd.export.optimize import PackedContext, fast_deconv
from ckbd.export.scale_index import SortedTableIndex
from ckbd.models import checkerboard as cb
from ckbd.runtime.intparams import (
    ANCHOR_LIMIT,
    MEAN_FRAC,
    Z_FRAC,
    Z_LIMIT,
    IntegerParams,
    IntLayer,
    PassParams,
)


def _channel_tensor(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype).reshape(1, -1, 1, 1)


class ShiftRound(nn.Module):
    """``floor((x + r) * 2**-s)`` per channel, ``r = 2**(s-1)`` for s > 0 (round half up).

    Both the add and the power-of-two multiply are exact on the integer-valued ``x``.
    """

    offset: Tensor
    scale: Tensor

    def __init__(self, shift: np.ndarray, dtype: torch.dtype) -> None:
        super().__init__()
        shift = np.asarray(shift, dtype=np.int64)
        offset = np.where(shift > 0, np.exp2(np.maximum(shift - 1, 0)), 0.0)
        self.register_buffer("offset", _channel_tensor(offset, dtype))
        self.register_buffer("scale", _channel_tensor(np.exp2(-shift.astype(np.float64)), dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.floor((x + self.offset) * self.scale)


class Requantize(nn.Module):
    """``floor(clamp(leaky(acc * 2**-s) + 1/2, -bound, bound))``: the spec's requantisation.

    Every step is exact: the multiply is by a power of two, the leaky slope is a power of two, the
    sum with 1/2 fits the 24-bit significand (|acc| < 2**23), and clamping before the floor equals
    clamping after it (the bound is an integer). ONNX Runtime may fold the multiply into the
    convolution's weights and fuse the leaky ReLU into it; both stay exact.
    """

    scale: Tensor

    def __init__(self, layer: IntLayer, dtype: torch.dtype) -> None:
        super().__init__()
        assert layer.shift is not None
        shift = np.asarray(layer.shift, dtype=np.float64)
        self.register_buffer("scale", _channel_tensor(np.exp2(-shift), dtype))
        self.bound = float(layer.bound)
        self.slope = None if layer.leaky is None else math.ldexp(1.0, -layer.leaky)

    def forward(self, acc: Tensor) -> Tensor:
        t = acc * self.scale
        if self.slope is not None:
            t = nn.functional.leaky_relu(t, self.slope)
        return torch.floor(torch.clamp(t + 0.5, -self.bound, self.bound))


def integer_conv(layer: IntLayer, dtype: torch.dtype) -> nn.Module:
    """The layer's convolution with its integer weights (phase convs for a transposed conv)."""
    weight = torch.as_tensor(layer.weight.astype(np.float64), dtype=dtype)
    bias = torch.as_tensor(layer.bias.astype(np.float64), dtype=dtype)
    k = weight.shape[-1]
    if layer.kind == "deconv":
        conv: nn.Module = nn.ConvTranspose2d(weight.shape[0], weight.shape[1], k, stride=layer.stride,
                                             padding=layer.padding,
                                             output_padding=layer.stride + 2 * layer.padding - k)
    else:
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], k, stride=layer.stride, padding=layer.padding)
    conv.to(dtype)
    conv.weight = nn.Parameter(weight, requires_grad=False)  # type: ignore[union-attr]
    conv.bias = nn.Parameter(bias, requires_grad=False)  # type: ignore[union-attr]
    return fast_deconv(conv) if isinstance(conv, nn.ConvTranspose2d) else conv


class IntegerLayer(nn.Module):
    def __init__(self, layer: IntLayer, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = integer_conv(layer, dtype)
        self.shuffle = nn.PixelShuffle(layer.shuffle) if layer.shuffle > 1 else nn.Identity()
        self.requant = Requantize(layer, dtype) if layer.shift is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.requant(self.shuffle(self.conv(x)))


class GuessedIndex(nn.Module):
    """The same count rule in one gather: a log guess that is exact or one low, then one comparison.

    The exporter proved (``index_guess``) that the guess is never two off for any accumulator the
    layers can produce, with a margin far beyond float error; the comparison is between integers.
    """

    table: Tensor

    def __init__(self, thresholds: np.ndarray, guess: tuple[float, float], dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.append(thresholds.astype(np.float64), np.inf), dtype=dtype))
        self.a, self.b = guess
        self.last = len(thresholds)

    def forward(self, acc: Tensor) -> Tensor:
        x = torch.log(torch.clamp(acc, min=1.0)) * self.a + self.b
        guess = torch.clamp(torch.floor(x), 0, self.last).to(torch.int32)
        return guess + (acc > self.table[guess]).to(torch.int32)


def integer_binary_search(thresholds: np.ndarray) -> nn.Module:
    """``#{k : acc > thresholds[k]}`` by binary search, for thresholds the log guess cannot prove.

    Exact: every reachable accumulator and threshold below 2**24 is an integer float32 holds.
    """
    table = np.append(thresholds.astype(np.float64), np.inf)  # the search reads table[:-1]
    return SortedTableIndex(torch.as_tensor(table, dtype=torch.float64), strict=False)


class PassOutputs(nn.Module):
    """The layers of one parameter pass, then indexes and fixed-point means (as exact float32)."""

    def __init__(self, params: PassParams, M: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(IntegerLayer(layer, dtype) for layer in params.layers))
        self.index = (GuessedIndex(params.thresholds, params.guess, dtype) if params.guess is not None
                      else integer_binary_search(params.thresholds))
        self.means = ShiftRound(params.mean_shift, dtype)
        self.M = M
        self.unit = math.ldexp(1.0, -MEAN_FRAC)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        acc = self.layers(x)
        indexes = self.index(acc[:, : self.M])
        means = self.means(acc[:, self.M :]) * self.unit
        return indexes, means.to(torch.float32)


class IntegerHyperSynthesis(nn.Module):
    """z symbols -> hyper activations (integers, carried as float32)."""

    medians: Tensor

    def __init__(self, spec: IntegerParams, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("medians", _channel_tensor(spec.z_medians, dtype))
        self.input = ShiftRound(spec.z_shift, dtype)
        self.bound = float(spec.z_bound)
        self.layers = nn.Sequential(*(IntegerLayer(layer, dtype) for layer in spec.hyper))

    def forward(self, z_symbols: Tensor) -> Tensor:
        z = torch.clamp(z_symbols.to(self.dtype), -float(Z_LIMIT), float(Z_LIMIT))
        x = torch.clamp(self.input(z * float(1 << Z_FRAC) + self.medians), -self.bound, self.bound)
        return self.layers(x).to(torch.float32)


class IntegerAnchorParams(nn.Module):
    def __init__(self, spec: IntegerParams, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype, self.parity = dtype, spec.parity
        self.outputs = PassOutputs(spec.anchor, spec.M, dtype)

    def forward(self, hyper: Tensor) -> tuple[Tensor, Tensor]:
        return self.outputs(cb.pack(hyper.to(self.dtype), "anchor", self.parity))


class IntegerNonAnchorParams(nn.Module):
    def __init__(self, spec: IntegerParams, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype, self.parity = dtype, spec.parity
        self.input = ShiftRound(spec.context_shift, dtype)
        self.input_bound = float(spec.context_bound)
        context = spec.context
        conv = integer_conv(context, dtype)
        self.context = PackedContext(conv, spec.parity)  # type: ignore[arg-type]
        self.context_requant = Requantize(context, dtype)
        self.outputs = PassOutputs(spec.nonanchor, spec.M, dtype)

    def forward(self, hyper: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        fixed = torch.floor(torch.clamp(anchor_hat.to(self.dtype), -float(ANCHOR_LIMIT), float(ANCHOR_LIMIT))
                            * float(1 << MEAN_FRAC))
        x = torch.clamp(self.input(fixed), -self.input_bound, self.input_bound)
        context = self.context_requant(self.context(x))
        features = torch.cat((cb.pack(hyper.to(self.dtype), "nonanchor", self.parity), context), dim=1)
        return self.outputs(features)


def integer_stage_modules(spec: IntegerParams, dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    """The three index-deciding stages of the integer path, keyed by stage name."""
    from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS, NONANCHOR_PARAMS

    modules = {
        HYPER_SYNTHESIS: IntegerHyperSynthesis(spec, dtype),
        ANCHOR_PARAMS: IntegerAnchorParams(spec, dtype),
        NONANCHOR_PARAMS: IntegerNonAnchorParams(spec, dtype),
    }
    return {name: module.eval() for name, module in modules.items()}
