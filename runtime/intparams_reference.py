"""Pure numpy int64 evaluation of the integer entropy-parameter path (the definition, not the fast way).

Written straight from the rules in docs/DETERMINISM.md and :mod:`ckbd.runtime.intparams`, with
none of the exported graphs' rewrites: transposed convolutions by zero insertion, the context as
a full-resolution masked convolution over the unpacked anchors. The tests compare the exported
graphs and the torch backend against it element by element.
"""

from __future__ import annotations

import numpy as np

from ckbd.runtime.intparams import (
    ANCHOR_LIMIT,
    MEAN_FRAC,
    Z_FRAC,
    Z_LIMIT,
    IntegerParams,
    IntLayer,
    PassParams,
)


def _per_channel(shift: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(shift, dtype=np.int64).reshape(1, -1, *([1] * (ndim - 2)))


def _shift(values: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``floor(values / 2**s)`` for any integer s (``>>`` on int64 floors; s < 0 shifts left)."""
    return np.where(s > 0, values >> np.maximum(s, 0), values << np.maximum(-s, 0))


def _round_shift(values: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``floor(values / 2**s + 1/2)``: add half of the divisor, then an exact floor division."""
    return _shift(values + np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0), s)


def floor_shift(values: np.ndarray, shift: np.ndarray, leaky: int | None = None) -> np.ndarray:
    """``floor(values / 2**s + 1/2)`` per channel (axis 1): division by a power of two, rounded
    half up. With ``leaky`` = k, negative values are divided by 2**(s+k) instead."""
    s = _per_channel(shift, values.ndim)
    if leaky is None:
        return _round_shift(values, s)
    return np.where(values < 0, _round_shift(values, s + leaky), _round_shift(values, s))


def requantize(acc: np.ndarray, layer: IntLayer) -> np.ndarray:
    """Shift (with the leaky ReLU's slope on negatives) and saturate one layer's accumulator."""
    if layer.shift is None:
        return acc
    return np.clip(floor_shift(acc, layer.shift, layer.leaky), -layer.bound, layer.bound)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Exact int64 cross-correlation, NCHW x OIHW (batch 1 or more)."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.einsum("bchwij,ocij->bohw", windows, weight.astype(np.int64), optimize=True)
    return out + bias.astype(np.int64).reshape(1, -1, 1, 1)


def deconv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Transposed convolution (weight (Cin, Cout, k, k)) with output exactly ``stride`` x the input."""
    b, c, h, w = x.shape
    k = weight.shape[2]
    output_padding = stride + 2 * padding - k
    dilated = np.zeros((b, c, (h - 1) * stride + 1, (w - 1) * stride + 1), dtype=np.int64)
    dilated[:, :, ::stride, ::stride] = x
    lo, hi = k - 1 - padding, k - 1 - padding + output_padding
    dilated = np.pad(dilated, ((0, 0), (0, 0), (lo, hi), (lo, hi)))
    flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    return conv2d(dilated, np.ascontiguousarray(flipped), bias)


def run_layer(x: np.ndarray, layer: IntLayer) -> np.ndarray:
    if layer.kind == "deconv":
        acc = deconv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)
    else:
        acc = conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)
    if layer.shuffle > 1:
        r = layer.shuffle
        b, c, h, w = acc.shape
        acc = acc.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)
    return requantize(acc, layer)


def _columns(half: str, parity: str) -> tuple[int, int]:
    anchor_even = 0 if parity == "even" else 1
    even = anchor_even if half == "anchor" else 1 - anchor_even
    return even, 1 - even


def pack(full: np.ndarray, half: str, parity: str) -> np.ndarray:
    """(B, C, h, w) -> (B, C, h, w/2): the positions of one checkerboard half, row by row."""
    out = np.empty((*full.shape[:3], full.shape[3] // 2), dtype=full.dtype)
    for parity_row, first in enumerate(_columns(half, parity)):
        out[:, :, parity_row::2] = full[:, :, parity_row::2, first::2]
    return out


def unpack_anchors(anchors: np.ndarray, parity: str) -> np.ndarray:
    """Packed anchors -> full resolution, zeros at the non-anchor positions."""
    b, c, h, half = anchors.shape
    full = np.zeros((b, c, h, 2 * half), dtype=anchors.dtype)
    for parity_row, first in enumerate(_columns("anchor", parity)):
        full[:, :, parity_row::2, first::2] = anchors[:, :, parity_row::2]
    return full


def hyper_synthesis(spec: IntegerParams, z_symbols: np.ndarray) -> np.ndarray:
    """z symbols (int) -> hyper activations (int64, (1, 2M, h, w))."""
    z = np.clip(z_symbols.astype(np.int64), -Z_LIMIT, Z_LIMIT)
    x = (z << Z_FRAC) + spec.z_medians.reshape(1, -1, 1, 1)
    x = np.clip(floor_shift(x, spec.z_shift), -spec.z_bound, spec.z_bound)
    for layer in spec.hyper:
        x = run_layer(x, layer)
    return x


def _pass_outputs(x: np.ndarray, params: PassParams, M: int) -> tuple[np.ndarray, np.ndarray]:
    for layer in params.layers:
        x = run_layer(x, layer)
    scales, means = x[:, :M], x[:, M:]
    indexes = (scales[..., None] > params.thresholds.reshape(1, 1, 1, 1, -1)).sum(axis=-1)
    return indexes.astype(np.int32), floor_shift(means, params.mean_shift)


def anchor_params(spec: IntegerParams, hyper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hyper -> (indexes int32, means in 2**-MEAN_FRAC units, int64) at packed anchor positions."""
    return _pass_outputs(pack(hyper, "anchor", spec.parity), spec.anchor, spec.M)


def context_input(spec: IntegerParams, anchor_hat: np.ndarray) -> np.ndarray:
    """Decoded anchors (float32, multiples of 2**-MEAN_FRAC) -> the context's integer input."""
    fixed = np.clip(anchor_hat.astype(np.float64), -ANCHOR_LIMIT, ANCHOR_LIMIT) * (1 << MEAN_FRAC)
    q = floor_shift(np.floor(fixed).astype(np.int64), spec.context_shift)
    return np.clip(q, -spec.context_bound, spec.context_bound)


def nonanchor_params(spec: IntegerParams, hyper: np.ndarray, anchor_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hyper, decoded anchors) -> (indexes, means in 2**-MEAN_FRAC units) at packed non-anchors."""
    full = unpack_anchors(context_input(spec, anchor_hat), spec.parity)
    context = pack(run_layer(full, spec.context), "nonanchor", spec.parity)
    features = np.concatenate((pack(hyper, "nonanchor", spec.parity), context), axis=1)
    return _pass_outputs(features, spec.nonanchor, spec.M)


def means_to_float(means_fixed: np.ndarray) -> np.ndarray:
    """Fixed-point means as the float32 the stage contract carries (exact: |mean| < 2**15)."""
    return (means_fixed.astype(np.float64) / (1 << MEAN_FRAC)).astype(np.float32)


def stage_outputs(spec: IntegerParams, z_symbols: np.ndarray, anchor_hat: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the three integer stages, named and typed as the stage contract has them: what the
    graphs, the torch stages and the known-answer vectors are compared with."""
    hyper = hyper_synthesis(spec, z_symbols)
    a_idx, a_mean = anchor_params(spec, hyper)
    n_idx, n_mean = nonanchor_params(spec, hyper, anchor_hat)
    return {"hyper": hyper.astype(np.float32), "anchor_indexes": a_idx, "anchor_means": means_to_float(a_mean),
            "nonanchor_indexes": n_idx, "nonanchor_means": means_to_float(n_mean)}
