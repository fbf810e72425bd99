"""Post-training quantisation of a checkerboard model's entropy-parameter networks to the integer path.

Ranges come from running the float model on photos (every intermediate the integer graphs will
requantise, per channel). Weights are folded with their input's per-channel scale and quantised per
output channel; the scale is the larger of ``max|w| / (2**(weight_bits-1) - 1)`` and what keeps
``sum(|w|) * max|x| + |b|`` within :data:`~ckbd.runtime.intparams.ACC_LIMIT`, the bound that makes
float convolutions exact. Activations get per-channel power-of-two scales (a shift), so rescaling
is exact; the next layer absorbs each channel's scale into its weights before quantising.
The scale half of the last layer shares one scale (one integer threshold table per pass); the
mean half uses power-of-two scales so means convert to fixed point by a shift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ckbd.errors import ModelError
from ckbd.export.optimize import _phase_taps
from ckbd.export.stage_modules import require_checkerboard
from ckbd.models import checkerboard as cb
from ckbd.models.architectures import CheckerboardModel
from ckbd.runtime.intparams import (
    ACC_LIMIT,
    MAX_SHIFT,
    MEAN_FRAC,
    Z_FRAC,
    IntegerParams,
    IntLayer,
    PassParams,
)


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths of the integer path (activations are signed, symmetric)."""

    activation_bits: int = 8
    weight_bits: int = 16

    @property
    def act_bound(self) -> int:
        return (1 << (self.activation_bits - 1)) - 1


Ranges = dict[str, np.ndarray]


@dataclass
class _Link:
    """One conv of a chain: the conv, the pixel shuffle after it (1: none), the leaky slope after that."""

    conv: nn.Module
    shuffle: int = 1
    slope: float | None = None


def _chain(seq: nn.Module) -> list[_Link]:
    """The convs of a Sequential of convs, transposed convs, sub-pixel convs and leaky ReLUs."""
    links: list[_Link] = []
    for module in seq.children():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            links.append(_Link(module))
        elif (isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Conv2d)
              and isinstance(module[1], nn.PixelShuffle)):
            links.append(_Link(module[0], int(module[1].upscale_factor)))
        elif isinstance(module, nn.LeakyReLU) and links and links[-1].slope is None:
            links[-1].slope = float(module.negative_slope)
        else:
            raise ModelError(f"the integer entropy-parameter path does not support {type(module).__name__} "
                             "layers; export with --entropy-params float")
    return links


def leaky_exponent(slope: float) -> int:
    """k of the power-of-two slope 2**-k nearest ``slope`` (0.01 -> 7): exact in float arithmetic."""
    if not 0 < slope < 1:
        raise ModelError(f"the integer path needs a leaky-ReLU slope in (0, 1), got {slope}")
    return int(round(-math.log2(slope)))


def _run_chain(seq: nn.Module, x: Tensor, ranges: Ranges, prefix: str) -> Tensor:
    """Run a chain as the integer path will (slopes rounded to powers of two), recording each
    layer's output range after its activation: that is what the requantisation saturates."""
    for i, link in enumerate(_chain(seq)):
        x = link.conv(x)
        if link.shuffle > 1:
            x = nn.functional.pixel_shuffle(x, link.shuffle)
        if link.slope is not None:
            x = nn.functional.leaky_relu(x, 2.0 ** -leaky_exponent(link.slope))
        _update(ranges, f"{prefix}.{i}", x)
    return x


def _update(ranges: Ranges, key: str, x: Tensor) -> None:
    peak = x.detach().abs().amax(dim=(0, 2, 3)).double().numpy()
    ranges[key] = np.maximum(ranges[key], peak) if key in ranges else peak


@torch.no_grad()
def collect_ranges(model: CheckerboardModel, images: Iterable[np.ndarray]) -> Ranges:
    """Per-channel peak magnitudes of every value the integer graphs requantise, over ``images``."""
    from ckbd.runtime.codec import to_network_input

    model = require_checkerboard(model).eval()
    ranges: Ranges = {}
    medians = model.entropy_bottleneck.medians().detach().reshape(1, -1, 1, 1)
    parity = model.parity
    count = 0
    for image in images:
        x = torch.from_numpy(to_network_input(image))
        y = model.g_a(x)
        z_hat = torch.round(model.h_a(y) - medians) + medians
        _update(ranges, "z", z_hat)
        hyper = _run_chain(model.h_s, z_hat, ranges, "hyper")
        hyper_a = cb.pack(hyper, "anchor", parity)
        out = _run_chain(model.entropy_parameters, torch.cat((hyper_a, torch.zeros_like(hyper_a)), 1), ranges,
                         "anchor")
        means = out.chunk(2, dim=1)[1]
        anchor_hat = torch.round(cb.pack(y, "anchor", parity) - means) + means
        _update(ranges, "anchor_hat", anchor_hat)
        context = model.nonanchor_context(anchor_hat)
        _update(ranges, "context", context)
        features = torch.cat((cb.pack(hyper, "nonanchor", parity), context), 1)
        _run_chain(model.entropy_parameters, features, ranges, "nonanchor")
        count += 1
    if not count:
        raise ModelError("no calibration images for the integer entropy parameters")
    return ranges


def _exponent(peak: np.ndarray, bound: int) -> np.ndarray:
    """Per-channel e with ``peak / 2**e <= bound`` (smallest such): activation scale 2**e."""
    return np.ceil(np.log2(np.maximum(peak, 1e-8) / bound)).astype(np.int64)


def _tap_l1(weight: np.ndarray, kind: str, stride: int, padding: int) -> np.ndarray:
    """Per output channel, the largest ``sum(|w|)`` over the taps that reach one output element."""
    absw = np.abs(weight)
    if kind == "conv":
        return absw.sum(axis=(1, 2, 3))
    taps = _phase_taps(weight.shape[2], stride, padding)  # deconv: (Cin, Cout, k, k)
    sums = [absw[:, :, list(r.values())][:, :, :, list(c.values())].sum(axis=(0, 2, 3)) for r in taps for c in taps]
    return np.max(sums, axis=0)


def _weight_scales(weight: np.ndarray, bias: np.ndarray, kind: str, stride: int, padding: int,
                   in_bound: int, cfg: QuantConfig) -> np.ndarray:
    """Per output channel scale: as fine as the weight bits allow, as coarse as exactness needs."""
    out_axis = 1 if kind == "deconv" else 0
    other = tuple(a for a in range(4) if a != out_axis)
    peak = np.abs(weight).max(axis=other)
    wmax = (1 << (cfg.weight_bits - 1)) - 1
    # 1 % headroom for rounding the weights up; the exact check below has the last word.
    exact = (_tap_l1(weight, kind, stride, padding) * in_bound + np.abs(bias)) * 1.01 / (ACC_LIMIT - 1)
    return np.maximum(np.maximum(peak / wmax, exact), 1e-30)


#: Times a layer's weight scale is coarsened when rounding the weights broke the exactness bound.
MAX_COARSENING = 8


def _quantize(weight: np.ndarray, bias: np.ndarray, scales: np.ndarray, kind: str, stride: int, padding: int,
              in_bound: int, regroup: Callable[[np.ndarray], np.ndarray] = lambda s: s,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round to integers and prove the accumulator bound (the exactness condition) holds.

    Rounding can add up to half a unit per tap, more than the scale's 1 % headroom on layers with many
    small weights: the channels over the bound get a coarser scale (``regroup`` restores the scales'
    shared structure) and are rounded again. Returns (weights, biases, the scales used).
    """
    shape = (1, -1, 1, 1) if kind == "deconv" else (-1, 1, 1, 1)
    for _ in range(MAX_COARSENING):
        w_q = np.round(weight / scales.reshape(shape)).astype(np.int64)
        b_q = np.round(bias / scales).astype(np.int64)
        worst = _tap_l1(w_q, kind, stride, padding) * in_bound + np.abs(b_q)
        if not np.any(worst >= ACC_LIMIT):
            return w_q, b_q, scales
        over = worst >= ACC_LIMIT
        scales = regroup(np.where(over, scales * (worst / (ACC_LIMIT - 1)) * 1.001, scales))
    raise ModelError(f"integer quantisation cannot keep the accumulator under {ACC_LIMIT} (worst "
                     f"{int(worst.max())}) for a {kind} layer of {weight.shape}: its weights are too spread")


def _fold_inputs(weight: np.ndarray, kind: str, in_scale: np.ndarray) -> np.ndarray:
    """Weights in units of the integer input: ``w * scale[in_channel]``."""
    shape = (-1, 1, 1, 1) if kind == "deconv" else (1, -1, 1, 1)
    return weight * in_scale.reshape(shape)


def _layer(conv: nn.Module, weight: np.ndarray, in_scale: np.ndarray, in_bound: int, out_peak: np.ndarray | None,
           slope: float | None, cfg: QuantConfig, shuffle: int = 1) -> tuple[IntLayer, np.ndarray]:
    """One requantised layer and the real scale of its output's integer units (per channel).

    With a pixel shuffle, the ``shuffle**2`` conv channels that become one output channel share
    a weight scale, so that channel has one scale.
    """
    kind = "deconv" if isinstance(conv, nn.ConvTranspose2d) else "conv"
    stride, padding = int(conv.stride[0]), int(conv.padding[0])  # type: ignore[index]
    bias = _bias(conv)
    folded = _fold_inputs(weight, kind, in_scale)
    group = shuffle * shuffle

    def shared(scales: np.ndarray) -> np.ndarray:  # the channels of one shuffled output share a scale
        return np.repeat(scales.reshape(-1, group).max(axis=1), group)

    scales = shared(_weight_scales(folded, bias, kind, stride, padding, in_bound, cfg))
    w_q, b_q, scales = _quantize(folded, bias, scales, kind, stride, padding, in_bound, shared)
    layer = IntLayer(kind, w_q, b_q, stride, padding, shuffle=shuffle)
    scales = scales[::group]
    if out_peak is None:
        return layer, scales
    shift = np.clip(_exponent(out_peak / scales, cfg.act_bound), -30, MAX_SHIFT)
    layer.shift, layer.bound = shift, cfg.act_bound
    if slope is not None:
        layer.leaky = leaky_exponent(slope)
    return layer, scales * np.exp2(shift)


def _bias(conv: nn.Module) -> np.ndarray:
    bias = getattr(conv, "bias", None)
    if bias is None:
        return np.zeros(int(getattr(conv, "out_channels")))  # noqa: B009
    return bias.detach().double().numpy()  # type: ignore[no-any-return]


def _weight(conv: nn.Module) -> np.ndarray:
    return conv.weight.detach().double().numpy()  # type: ignore[union-attr,operator]


def _pass(seq: nn.Sequential, in_scale: np.ndarray, in_bound: int, ranges: Ranges, prefix: str,
          scale_table: np.ndarray, M: int, first_inputs: int, cfg: QuantConfig) -> PassParams:
    chain = _chain(seq)
    if any(link.shuffle > 1 or not isinstance(link.conv, nn.Conv2d) for link in chain):
        raise ModelError("the entropy-parameter net must be plain convolutions for the integer path")
    layers = []
    scale = in_scale
    for i, link in enumerate(chain[:-1]):
        weight = _weight(link.conv)[:, :first_inputs] if i == 0 else _weight(link.conv)
        layer, scale = _layer(link.conv, weight, scale, in_bound, ranges[f"{prefix}.{i}"], link.slope, cfg)
        layers.append(layer)
        in_bound = cfg.act_bound
    last = chain[-1].conv
    weight = _fold_inputs(_weight(last) if len(chain) > 1 else _weight(last)[:, :first_inputs], "conv", scale)
    bias = _bias(last)

    def structured(scales: np.ndarray) -> np.ndarray:
        scales = scales.copy()
        scales[:M] = scales[:M].max()  # one scale for the scale half: one threshold table
        scales[M:] = np.exp2(np.ceil(np.log2(scales[M:])))  # powers of two: means by a shift
        return scales

    scales = structured(_weight_scales(weight, bias, "conv", 1, 0, in_bound, cfg))
    w_q, b_q, scales = _quantize(weight, bias, scales, "conv", 1, 0, in_bound, structured)
    layers.append(IntLayer("conv", w_q, b_q))
    # acc > floor(t / s)  <=>  acc * s > t  for an integer acc: the float rule, exactly.
    thresholds = np.floor(scale_table[:-1].astype(np.float64) / scales[0]).astype(np.int64)
    mean_shift = -(np.log2(scales[M:]).astype(np.int64) + MEAN_FRAC)
    return PassParams(layers, thresholds, mean_shift, index_guess(thresholds))


#: Float error the index guess must tolerate (in table steps): far above float32's, far below 1/2.
GUESS_MARGIN = 0.05


def index_guess(thresholds: np.ndarray) -> tuple[float, float] | None:
    """(a, b) with ``clip(floor(ln(max(acc,1)) * a + b), 0, K-1)`` at most one below the true index.

    Fitted to the integer thresholds' own log spacing, then checked (float64, with GUESS_MARGIN
    either way) at every accumulator where the true index or a guess changes, which covers every
    accumulator up to ACC_LIMIT because both are monotone steps. None if any would be off by two.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if len(t) < 2 or t[0] < 1 or np.any(np.diff(t) < 0):
        return None
    k = np.arange(len(t))
    a, c = np.polyfit(np.log(t + 1), k, 1)  # index k+1 starts at acc = t_k + 1
    deviation = float(np.max(np.abs(np.log(t + 1) * a + c - k)))
    b = c + 1 - deviation - 2 * GUESS_MARGIN  # floor(guess) <= true index, by more than the margin
    steps = np.arange(-2, len(t) + 3, dtype=np.float64)
    crossings = np.concatenate([np.exp((steps - b + d) / a) for d in (-GUESS_MARGIN, GUESS_MARGIN)])
    crossings = crossings[crossings < ACC_LIMIT + 1]
    points = np.concatenate((t, t + 1, np.floor(crossings), np.ceil(crossings), [-1, 0, 1, 2, ACC_LIMIT]))
    acc = np.unique(np.clip(points, -1, ACC_LIMIT).astype(np.int64))
    true = np.searchsorted(t, acc, side="left")  # #{k : t_k < acc}
    x = np.log(np.maximum(acc, 1).astype(np.float64)) * a + b
    last = len(t)
    for shifted in (x - GUESS_MARGIN, x + GUESS_MARGIN):
        g = np.clip(np.floor(shifted), 0, last)
        if np.any((true < g) | (true > g + 1)):
            return None
    return float(a), float(b)


def build_integer_params(model: CheckerboardModel, ranges: Ranges, scale_table: np.ndarray,
                         cfg: QuantConfig = QuantConfig()) -> IntegerParams:
    """The integer spec of ``model`` from calibrated ``ranges`` (see :func:`collect_ranges`)."""
    model = require_checkerboard(model)
    M, N, bound = model.config.M, model.config.N, cfg.act_bound
    medians = model.entropy_bottleneck.medians().detach().double().numpy()
    z_exp = _exponent(ranges["z"], bound)
    scale = np.exp2(z_exp.astype(np.float64))
    hyper_layers = []
    for i, link in enumerate(_chain(model.h_s)):
        layer, scale = _layer(link.conv, _weight(link.conv), scale, bound, ranges[f"hyper.{i}"], link.slope, cfg,
                              link.shuffle)
        hyper_layers.append(layer)
    hyper_scale = scale
    a_exp = _exponent(ranges["anchor_hat"], bound)
    ctx_conv = model.context_prediction
    ctx_weight = ctx_conv.masked_weight().detach().double().numpy()  # type: ignore[operator]
    context, ctx_scale = _layer(ctx_conv, ctx_weight, np.exp2(a_exp.astype(np.float64)), bound,
                                ranges["context"], None, cfg)
    table = np.asarray(scale_table, dtype=np.float32)
    anchor = _pass(model.entropy_parameters, hyper_scale, bound, ranges, "anchor", table, M, 2 * M, cfg)
    nonanchor = _pass(model.entropy_parameters, np.concatenate((hyper_scale, ctx_scale)), bound, ranges,
                      "nonanchor", table, M, 4 * M, cfg)
    return IntegerParams(
        M=M, N=N, z_medians=np.round(medians * (1 << Z_FRAC)).astype(np.int64),
        z_shift=z_exp + Z_FRAC, z_bound=bound, hyper=hyper_layers,
        context_shift=a_exp + MEAN_FRAC, context_bound=bound, context=context,
        anchor=anchor, nonanchor=nonanchor, parity=model.parity,
        meta={"activation_bits": cfg.activation_bits, "weight_bits": cfg.weight_bits},
    )


def quantize_model(model: CheckerboardModel, images: Iterable[np.ndarray], scale_table: np.ndarray,
                   cfg: QuantConfig = QuantConfig()) -> IntegerParams:
    """Calibrate on ``images`` (uint8 H x W x 3) and build the integer spec."""
    return build_integer_params(model, collect_ranges(model, images), scale_table, cfg)


#: Calibration defaults: enough photos for stable per-channel peaks, cropped so it takes seconds.
CALIBRATION_COUNT = 16
CALIBRATION_SIDE = 512


def calibration_images(folder: Path, count: int = CALIBRATION_COUNT, side: int = CALIBRATION_SIDE) -> list[np.ndarray]:
    """Centre crops (at most ``side`` square) of ``count`` photos spread evenly over ``folder``."""
    from ckbd.runtime.imageio import find_images, read_image

    files = find_images(folder, what="calibration image")
    picked = files[:: max(1, len(files) // count)][:count]
    crops = []
    for path in picked:
        image = read_image(path, quiet=True)
        h, w = image.shape[:2]
        top, left = (h - min(h, side)) // 2, (w - min(w, side)) // 2
        crops.append(np.ascontiguousarray(image[top : top + min(h, side), left : left + min(w, side)]))
    return crops
