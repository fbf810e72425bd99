"""Equivalent, faster forms of a checkerboard model's stages, rewritten in torch before export.

Every rewrite here computes the same function as the trained module (up to float rounding, checked
to 1e-4 relative by the tests) but exports to a graph that ONNX Runtime or TensorRT runs faster:

- reparametrisations are baked into plain weights: GDN's ``beta``/``gamma`` become a 1x1 conv on
  ``x * x`` (:class:`BakedGDN`), a masked conv's mask is multiplied into its weight;
- stride-2 transposed convs become stride-1 convs plus a depth-to-space. Runtimes implement
  transposed convs as GEMM + col2im scatter, which misses the fast blocked conv kernels. The
  textbook sub-pixel form (:func:`subpixel_deconv`: one 3x3 conv to ``4 * Cout`` channels, then
  ``PixelShuffle(2)``) is exact but multiplies 36 taps where the 5x5 kernel has 25, so export uses
  :class:`PhaseDeconv`: one conv per output phase with exactly that phase's taps (3x3, 3x2, 2x3,
  2x2), concatenated and interleaved by one ``DepthToSpace``. Narrow layers (the 3-channel
  output) stay transposed convs, which are faster there (see :data:`MIN_PHASE_CHANNELS`);
- the anchor pass skips the all-zero context half of the first entropy-parameter conv
  (:func:`anchor_entropy_parameters`);
- the non-anchor context is computed only at non-anchor positions, straight from the packed
  anchors (:class:`PackedContext`) instead of a full-resolution masked conv over zero-filled
  anchors (four times the positions, twice the taps);
- scale indexes come from a log-linear guess corrected by two exact comparisons
  (:class:`~ckbd.export.scale_index.LogTableIndex`; a binary search,
  :class:`~ckbd.export.scale_index.SortedTableIndex`, for tables that are not
  log-spaced) instead of one comparison per table entry.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ckbd.export.scale_index import LogTableIndex, SortedTableIndex, fast_indexer  # noqa: F401  (re-exported)
from ckbd.export.stage_modules import (
    StageParts,
    require_checkerboard,
    scale_table_tensor,
    stage_modules,
)
from ckbd.models import checkerboard as cb
from ckbd.models.architectures import CheckerboardModel
from ckbd.models.layers import GDN, MaskedConv2d
from ckbd.runtime.stages import ALL_STAGES

# ---------------------------------------------------------------------------------------------
# Baked reparametrisations


def _pair(value: object) -> tuple[int, int]:
    """A conv geometry attribute as two ints (torch types them loosely)."""
    if not isinstance(value, tuple) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise TypeError(f"expected a pair of ints, got {value!r}")
    return value[0], value[1]


def _with_params(conv: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """Give ``conv`` detached copies of ``weight`` and ``bias`` (None: no bias)."""
    conv.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=False)
    conv.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
    return conv


class BakedGDN(nn.Module):
    """GDN / IGDN with ``beta`` and ``gamma`` in plain form: ``x * (conv1x1(x*x))^(∓1/2)``."""

    def __init__(self, gdn: GDN) -> None:
        super().__init__()
        beta, gamma = (t.detach() for t in gdn.effective())
        channels = beta.numel()
        self.inverse = gdn.inverse
        self.norm = _with_params(nn.Conv2d(channels, channels, 1), gamma.reshape(channels, channels, 1, 1), beta)

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.sqrt(self.norm(x * x))
        return x * norm if self.inverse else x / norm


def bake_masked_conv(conv: MaskedConv2d) -> nn.Conv2d:
    """A plain conv whose weight is the masked weight (the mask multiply is gone from the graph)."""
    plain = nn.Conv2d(
        conv.in_channels, conv.out_channels, _pair(conv.kernel_size), stride=_pair(conv.stride),
        padding=_pair(conv.padding), dilation=_pair(conv.dilation), groups=conv.groups,
    )
    return _with_params(plain, conv.masked_weight(), conv.bias)


# ---------------------------------------------------------------------------------------------
# Transposed conv -> stride-1 convs + depth-to-space


def _phase_taps(kernel: int, stride: int, padding: int) -> list[dict[int, int]]:
    """For each output phase, {input offset d: kernel tap t} of a transposed conv (1-d).

    Output ``o = stride * m + phase`` receives input ``m + d`` through tap
    ``t = phase + padding - stride * d`` whenever ``0 <= t < kernel``.
    """
    taps = []
    for phase in range(stride):
        span = range(-(kernel + padding) // stride - 1, (kernel + padding) // stride + 2)
        taps.append({d: phase + padding - stride * d for d in span if 0 <= phase + padding - stride * d < kernel})
    return taps


def _is_upsampler(deconv: nn.ConvTranspose2d) -> bool:
    """Square, ungrouped, undilated, and output exactly ``stride`` times the input."""
    (kh, kw), (sh, sw) = _pair(deconv.kernel_size), _pair(deconv.stride)
    (ph, pw), (oph, opw) = _pair(deconv.padding), _pair(deconv.output_padding)
    return (
        sh == sw and kh == kw and ph == pw and oph == opw and deconv.groups == 1
        and deconv.dilation == (1, 1) and deconv.padding_mode == "zeros"
        and kh + oph - 2 * ph - sh == 0
    )


def subpixel_deconv(deconv: nn.ConvTranspose2d) -> nn.Module:
    """``ConvTranspose2d`` with output ``stride * input`` as ``Conv2d`` + ``PixelShuffle(stride)``.

    Output phase ``(ph, pw)`` of the transposed conv is an ordinary conv of the input whose taps
    are the kernel entries that land on that phase; the sub-pixel conv computes all phases as
    ``stride**2`` groups of output channels (zero-filled where a phase has fewer taps) and
    ``PixelShuffle`` interleaves them. Returns ``deconv`` itself when its geometry does not fit
    (output not exactly ``stride`` times the input, groups, dilation).
    """
    if not _is_upsampler(deconv):
        return deconv
    stride = deconv.stride[0]
    taps = _phase_taps(deconv.kernel_size[0], stride, _pair(deconv.padding)[0])
    offsets = [d for phase in taps for d in phase]
    reach = max(-min(offsets), max(offsets))
    size = 2 * reach + 1
    w = deconv.weight.detach()  # (Cin, Cout, k, k)
    c_in, c_out = w.shape[0], w.shape[1]
    weight = torch.zeros(c_out, stride, stride, c_in, size, size, dtype=w.dtype)
    for a, row_taps in enumerate(taps):
        for b, col_taps in enumerate(taps):
            for di, ti in row_taps.items():
                for dj, tj in col_taps.items():
                    weight[:, a, b, :, di + reach, dj + reach] = w[:, :, ti, tj].T
    bias = deconv.bias.repeat_interleave(stride * stride) if deconv.bias is not None else None
    conv = nn.Conv2d(c_in, c_out * stride * stride, size, padding=reach)
    _with_params(conv, weight.reshape(c_out * stride * stride, c_in, size, size), bias)
    return nn.Sequential(conv, nn.PixelShuffle(stride))


class _PaddedConv(torch.autograd.Function):
    """``conv2d(pad(x))`` that exports as one ONNX ``Conv`` with asymmetric ``pads``.

    torch's conv only pads symmetrically, so the exact phase kernels need an explicit pad; left
    as a separate ``Pad`` node it costs a full copy of the input per conv in ONNX Runtime.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, pads: tuple[int, int, int, int]) -> Tensor:  # type: ignore[override]
        return F.conv2d(F.pad(x, pads), weight, bias)

    @staticmethod
    def symbolic(g, x, weight, bias, pads):  # type: ignore[no-untyped-def]
        left, right, top, bottom = pads
        kernel = weight.type().sizes()[-2:]
        return g.op("Conv", x, weight, bias, kernel_shape_i=list(kernel), pads_i=[top, left, bottom, right],
                    strides_i=[1, 1], dilations_i=[1, 1], group_i=1)


class PaddedConv(nn.Module):
    """A stride-1 conv with its own (left, right, top, bottom) zero padding."""

    def __init__(self, weight: Tensor, bias: Tensor | None, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        if min(pads) < 0:
            raise ValueError(f"negative padding {pads}")
        self.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=False)
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias.detach().clone()
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.pads = tuple(int(p) for p in pads)

    def forward(self, x: Tensor) -> Tensor:
        return _PaddedConv.apply(x, self.weight, self.bias, self.pads)


class _DepthToSpaceDCR(torch.autograd.Function):
    """Phase-major depth-to-space: channel ``(ph * r + pw) * C + c`` -> pixel phase (ph, pw) of c.

    ``PixelShuffle`` is the channel-major (CRD) order; concatenating per-phase conv outputs gives
    the phase-major (DCR) order, which ONNX ``DepthToSpace`` supports directly.
    """

    @staticmethod
    def forward(ctx, x: Tensor, r: int) -> Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        out = x.reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
        return out.reshape(n, c // (r * r), h * r, w * r)

    @staticmethod
    def symbolic(g, x, r):  # type: ignore[no-untyped-def]
        return g.op("DepthToSpace", x, blocksize_i=r, mode_s="DCR")


class PhaseDeconv(nn.Module):
    """A stride-s transposed conv as s*s exact phase convs, concatenated, then depth-to-space.

    Unlike :func:`subpixel_deconv`, no phase carries zero taps: for the 5x5 stride-2 kernel the
    phases are 3x3, 3x2, 2x3 and 2x2 convs, 25 taps in all instead of 4 * 9 = 36.
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not _is_upsampler(deconv):
            raise ValueError("unsupported transposed-conv geometry")
        stride, padding = deconv.stride[0], _pair(deconv.padding)[0]
        taps = _phase_taps(deconv.kernel_size[0], stride, padding)
        if any(sorted(t) != list(range(min(t), max(t) + 1)) for t in taps):
            raise ValueError("phase offsets are not contiguous")
        w = deconv.weight.detach()  # (Cin, Cout, k, k)
        self.stride = stride
        self.phases = nn.ModuleList()
        for rows in taps:
            for cols in taps:
                r_off, c_off = sorted(rows), sorted(cols)
                kernel = w[:, :, [rows[d] for d in r_off]][:, :, :, [cols[d] for d in c_off]]
                pads = (-c_off[0], c_off[-1], -r_off[0], r_off[-1])
                self.phases.append(PaddedConv(kernel.transpose(0, 1), deconv.bias, pads))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([phase(x) for phase in self.phases], dim=1)
        return _DepthToSpaceDCR.apply(y, self.stride)


#: Below this many output channels a transposed conv stays as it is: blocked conv kernels pad
#: the output channels to their block (8 or 16), so the phase convs of the 3-channel last layer
#: of a synthesis ran 3.5x slower than ONNX Runtime's ConvTranspose (measured, 192 -> 3 at
#: 256x384 input: 215 ms vs 62 ms on one core).
MIN_PHASE_CHANNELS = 16


def fast_deconv(deconv: nn.ConvTranspose2d) -> nn.Module:
    """The fastest exact replacement of a transposed conv we have (itself if none fits)."""
    if deconv.out_channels < MIN_PHASE_CHANNELS:
        return deconv
    try:
        return PhaseDeconv(deconv)
    except ValueError:
        return deconv


def bake_transform(module: nn.Module) -> nn.Module:
    """A deep copy of a transform with every rewrite above applied to its layers."""
    module = copy.deepcopy(module)
    _bake_children(module)
    return _bake_one(module)


def _bake_one(module: nn.Module) -> nn.Module:
    if isinstance(module, GDN):
        return BakedGDN(module)
    if isinstance(module, MaskedConv2d):
        return bake_masked_conv(module)
    if isinstance(module, nn.ConvTranspose2d):
        return fast_deconv(module)
    return module


def _bake_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        _bake_children(child)
        setattr(module, name, _bake_one(child))


# ---------------------------------------------------------------------------------------------
# Entropy parameters


def anchor_entropy_parameters(entropy_parameters: nn.Sequential, hyper_channels: int) -> nn.Sequential:
    """The entropy-parameter net for the anchor pass, whose context input is all zeros.

    Zero context channels contribute nothing to the first 1x1 conv, so its weight is sliced to
    the hyper channels and the zeros are never built.
    """
    layers = copy.deepcopy(entropy_parameters)
    first = layers[0]
    if not isinstance(first, nn.Conv2d) or first.kernel_size != (1, 1):
        raise TypeError("the entropy-parameter net must start with a 1x1 conv")
    sliced = nn.Conv2d(hyper_channels, first.out_channels, 1)
    layers[0] = _with_params(sliced, first.weight[:, :hyper_channels], first.bias)
    return layers


class PackedContext(nn.Module):
    """The checkerboard context at packed non-anchor positions, from the packed anchors.

    Split the packed anchors into their even and odd rows (two (h/2, w/2) images). A non-anchor
    in an even (odd) row sees, through each tap of the masked 5x5 kernel, an anchor in a fixed
    row parity at a fixed (row, column) offset in that half-resolution image, so its context is
    the sum of two small convs, one per source row parity. The four convs have 6 taps each: the 12
    nonzero taps of the 5x5 mask, evaluated only where they are needed.
    """

    def __init__(self, context: nn.Conv2d, parity: str) -> None:
        super().__init__()
        if context.kernel_size[0] != context.kernel_size[1] or context.stride != (1, 1):
            raise TypeError("the context prediction must be a square stride-1 conv")
        weight = (context.masked_weight() if isinstance(context, MaskedConv2d) else context.weight).detach()
        bias = context.bias.detach() if context.bias is not None else None
        self.convs = nn.ModuleList()
        for p in (0, 1):
            for q in (0, 1):  # the bias is added once per output row parity, with q = 0
                kernel, pads = self._sub_kernel(weight, _pair(context.padding)[0], parity, p, q)
                self.convs.append(PaddedConv(kernel, bias if q == 0 else None, pads))

    @staticmethod
    def _sub_kernel(
        weight: Tensor, padding: int, parity: str, p: int, q: int
    ) -> tuple[Tensor, tuple[int, int, int, int]]:
        """Kernel and (left, right, top, bottom) pad from source rows ``q`` to output rows ``p``.

        Output (row ``2r + p``, packed column ``k``) is the full-resolution position
        ``(2r + p, 2k + cn[p])``; tap ``(di, dj)`` reads the anchor at row ``2(r + a) + q`` and
        packed column ``k + b`` with ``a = (p + di - q) / 2``, ``b = (cn[p] + dj - ca[q]) / 2``,
        where ``cn``/``ca`` are the first non-anchor/anchor columns of even and odd rows.
        """
        cn, ca = cb.first_columns("nonanchor", parity), cb.first_columns("anchor", parity)
        size = weight.shape[-1]
        taps: dict[tuple[int, int], tuple[int, int]] = {}
        for i in range(size):
            for j in range(size):
                di, dj = i - padding, j - padding
                # Keep taps that land on an anchor in a row of parity q; the rest read zeros.
                if (p + di - q) % 2 or (cn[p] + dj - ca[q]) % 2:
                    continue
                taps[((p + di - q) // 2, (cn[p] + dj - ca[q]) // 2)] = (i, j)
        rows = [a for a, _ in taps] or [0]
        cols = [b for _, b in taps] or [0]
        a0, b0 = min(min(rows), 0), min(min(cols), 0)
        a1, b1 = max(max(rows), 0), max(max(cols), 0)
        kernel = torch.zeros(weight.shape[0], weight.shape[1], a1 - a0 + 1, b1 - b0 + 1, dtype=weight.dtype)
        for (a, b), (i, j) in taps.items():
            kernel[:, :, a - a0, b - b0] = weight[:, :, i, j]
        return kernel, (-b0, b1, -a0, a1)

    def forward(self, anchor_hat: Tensor) -> Tensor:
        sources = (anchor_hat[:, :, 0::2], anchor_hat[:, :, 1::2])
        rows = [self.convs[2 * p](sources[0]) + self.convs[2 * p + 1](sources[1]) for p in (0, 1)]
        return torch.stack(rows, dim=3).flatten(2, 3)


# ---------------------------------------------------------------------------------------------
# The optimised parts


class OptimizedParts(StageParts):
    """Every stage of a checkerboard model in its export form (see the module docstring)."""

    def __init__(self, model: CheckerboardModel, scale_table: Tensor) -> None:
        super().__init__()
        model = require_checkerboard(model)
        self.parity = model.parity
        self.register_buffer("medians", model.entropy_bottleneck.medians().detach().clone())
        self.indexer = fast_indexer(scale_table)
        self.g_a, self.h_a = bake_transform(model.g_a), bake_transform(model.h_a)
        self.h_s, self.g_s = bake_transform(model.h_s), bake_transform(model.g_s)
        hyper_channels = 2 * model.config.M
        self.anchor_net = anchor_entropy_parameters(model.entropy_parameters, hyper_channels)
        self.nonanchor_net = copy.deepcopy(model.entropy_parameters)
        self.context = PackedContext(model.context_prediction, model.parity)

    def analysis(self, image: Tensor) -> Tensor:
        return self.g_a(image)

    def hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(y)

    def hyper_synthesis(self, z_hat: Tensor) -> Tensor:
        return self.h_s(z_hat)

    def synthesis(self, y_hat: Tensor) -> Tensor:
        return self.g_s(y_hat)

    def anchor_params(self, hyper_anchor: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = self.anchor_net(hyper_anchor).chunk(2, dim=1)
        return scales, means

    def nonanchor_params(self, hyper_nonanchor: Tensor, anchor_hat: Tensor) -> tuple[Tensor, Tensor]:
        features = torch.cat((hyper_nonanchor, self.context(anchor_hat)), dim=1)
        scales, means = self.nonanchor_net(features).chunk(2, dim=1)
        return scales, means


def optimized_parts(model: CheckerboardModel, scale_table: object) -> OptimizedParts:
    return OptimizedParts(model, scale_table_tensor(scale_table)).eval()  # type: ignore[arg-type]


def optimized_stage_modules(
    model: CheckerboardModel, scale_table: object, stages: tuple[str, ...] = ALL_STAGES
) -> dict[str, nn.Module]:
    """The export stage modules: same I/O as the plain ones, faster graphs."""
    return stage_modules(optimized_parts(model, scale_table), stages)
