"""Synthesis rewrites that only change how ONNX Runtime's CPU provider lays the work out.

ONNX Runtime runs convolutions in a blocked channel layout (NCHWc) and converts to plain NCHW
(``ReorderOutput``) before any op it has no blocked kernel for, and back (``ReorderInput``) before the
next convolution. In the exported synthesis each up-sampling layer was

    phase convs -> Concat -> DepthToSpace -> IGDN (x * sqrt(conv1x1(x * x)))

and ``DepthToSpace`` forces plain layout, so the IGDN's squares reached its 1x1 convolution through a
full-resolution ``ReorderInput``. IGDN is per pixel (a 1x1 convolution and element-wise ops), so it
commutes with the interleave: :class:`PhaseIGDN` applies it to each phase output, where the squares
are taken in the blocked layout the phase convolution left them in, and interleaves once at the end.
Same function, same weights (each output pixel's channel sum is the same sum), fewer layout
conversions and a lower peak (synthesis of a 2048x2048 image: 206 -> 190 bytes/pixel). Measured on
the 2-core AVX2 machine, 2 threads, old and new graphs alternating inside full decodes of Kodak images
(load 2.5-3 from other jobs): shipped model synthesis 279.0 -> 268.2 ms (-4 %, 12 images), paper-size
model (N=192, M=320) 769.6 -> 723.0 ms (-6 %, 3 images); earlier runs at load 3-4 gave -4 % and +2 %.

The interleave itself is not ``DepthToSpace`` either (:func:`interleave_phases`): ONNX Runtime runs
that op as a generic 6-d transpose, 92 ms for the largest layer of the paper-size model (four
192-channel phases of 128x192) where two stack-and-flatten steps, whose concats copy contiguous
runs, take 37 ms. Measured on the 2-core AMD EPYC (AVX2) machine, 2 threads, the two graphs
alternating on one Kodak-size latent, identical pixels: latent synthesis of the paper-size model
825 -> 751 ms, of the shipped model 111 -> 94 ms.

Only latent synthesis is rewritten: its output is pixels, never symbols, so no bitstream changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ckbd.export.optimize import BakedGDN, PhaseDeconv


class PhaseIGDN(nn.Module):
    """A :class:`PhaseDeconv` followed by a (baked) GDN/IGDN, the GDN applied before the interleave."""

    def __init__(self, deconv: PhaseDeconv, gdn: BakedGDN) -> None:
        super().__init__()
        self.phases = deconv.phases
        self.stride = deconv.stride
        self.gdn = gdn

    def forward(self, x: Tensor) -> Tensor:
        return interleave_phases([self.gdn(phase(x)) for phase in self.phases], self.stride)


def interleave_phases(phases: list[Tensor], stride: int) -> Tensor:
    """The image whose pixel ``(s*i + r, s*j + c)`` is pixel ``(i, j)`` of phase ``s*r + c``.

    The same result as ``Concat`` + ``DepthToSpace`` (DCR), written as two stack-and-flatten steps
    (``Unsqueeze``, ``Concat`` on the new last axis, ``Reshape``): ONNX Runtime's ``DepthToSpace``
    is a generic 6-d transpose, while a concat copies contiguous runs (see the module docstring).
    """
    rows = [torch.stack(phases[r * stride:(r + 1) * stride], dim=-1).flatten(-2) for r in range(stride)]
    return torch.stack(rows, dim=3).flatten(2, 3)


def fuse_phase_gdn(transform: nn.Module) -> nn.Module:
    """``transform`` with every PhaseDeconv + BakedGDN pair of a Sequential merged into a PhaseIGDN."""
    if not isinstance(transform, nn.Sequential):
        return transform
    layers: list[nn.Module] = []
    for layer in transform:
        if isinstance(layer, BakedGDN) and layers and isinstance(layers[-1], PhaseDeconv):
            layers.append(PhaseIGDN(layers.pop(), layer))  # type: ignore[arg-type]
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


def rewrite_synthesis(parts: nn.Module) -> None:
    """Apply the CPU-layout rewrites to the synthesis transform of optimised stage parts, in place."""
    g_s = getattr(parts, "g_s", None)
    if isinstance(g_s, nn.Module):
        parts.g_s = fuse_phase_gdn(g_s)
