"""How far a transform's outputs reach into its input: the halo a tile needs.

A tile of the latent (synthesis) or of the image (analysis) is run with a halo of real
neighbours around the part that is kept. The halo must cover the receptive field, so that every
kept output sees exactly the inputs the whole-image run gives it. The receptive field is derived
here from the layer geometry of each architecture, by propagating an interval of output indexes
back through every layer (one axis; the transforms are separable in extent):

* ``conv(k, s)`` with padding ``k // 2``: output ``o`` reads inputs ``s*o - k//2 ... s*o + k//2``;
* ``deconv(k, s)`` (transposed, padding ``k // 2``): output ``o`` reads the inputs ``i`` with
  ``0 <= o + k//2 - s*i < k``;
* ``subpel(k, r)``: a ``k x k`` stride-1 conv to ``r*r`` times the channels, then a pixel shuffle,
  so output ``o`` comes from conv output ``o // r``;
* pointwise layers (GDN/IGDN, which mix channels only, activations, 1x1 convs) add nothing;
* a residual block needs the union of its branch and its skip path.

Worked out for ``mbt2018-ckbd`` synthesis (four ``deconv(5, 2)``, IGDN between): one image pixel
reads the latent within 2 positions either side (about 1 + 1/2 + 1/4 + 1/8 latent units, rounded
outwards at each layer), so a halo of 2 latent positions (32 pixels) suffices. ``cheng2020-ckbd``
synthesis (residual blocks of two 3x3 convs, three residual upsampling blocks, one sub-pixel conv)
reads 4 latent positions either side at the finest level. For analysis the halo is what one ``y``
(or ``z``, which also passes through the hyper analysis ``h_a``) reads of the image beyond its own
16 (64) pixels; ``tests/test_tiling.py`` checks every figure against the torch modules by
perturbing inputs just inside and just outside the derived field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckbd.errors import ModelError


@dataclass(frozen=True)
class Conv:
    kernel: int
    stride: int = 1


@dataclass(frozen=True)
class Deconv:
    kernel: int
    stride: int = 2


@dataclass(frozen=True)
class Subpel:
    kernel: int = 3
    factor: int = 2


@dataclass(frozen=True)
class Residual:
    """``branch(x) + skip(x)``; an empty skip is the identity."""

    branch: tuple[Layer, ...]
    skip: tuple[Layer, ...] = ()


Layer = Conv | Deconv | Subpel | Residual


def input_interval(layers: tuple[Layer, ...], lo: int, hi: int) -> tuple[int, int]:
    """Input indexes that outputs ``lo..hi`` (inclusive) of ``layers`` read, borders ignored."""
    for layer in reversed(layers):
        lo, hi = _layer_interval(layer, lo, hi)
    return lo, hi


def _layer_interval(layer: Layer, lo: int, hi: int) -> tuple[int, int]:
    if isinstance(layer, Conv):
        pad = layer.kernel // 2
        return layer.stride * lo - pad, layer.stride * hi - pad + layer.kernel - 1
    if isinstance(layer, Deconv):
        pad = layer.kernel // 2
        return -(-(lo + pad - layer.kernel + 1) // layer.stride), (hi + pad) // layer.stride
    if isinstance(layer, Subpel):
        pad = layer.kernel // 2
        return lo // layer.factor - pad, hi // layer.factor + pad
    a = input_interval(layer.branch, lo, hi)
    b = input_interval(layer.skip, lo, hi)
    return min(a[0], b[0]), max(a[1], b[1])


def _conv5() -> Conv:
    return Conv(5, 2)


_RB = Residual((Conv(3), Conv(3)))
_RB_STRIDE = Residual((Conv(3, 2), Conv(3)), (Conv(1, 2),))
_RB_UP = Residual((Subpel(3, 2), Conv(3)), (Subpel(3, 2),))

#: Layer geometry of the spatial transforms, per architecture (see ckbd/models/transforms.py).
TRANSFORMS: dict[str, dict[str, tuple[Layer, ...]]] = {
    "mbt2018-ckbd": {
        "g_a": (_conv5(), _conv5(), _conv5(), _conv5()),
        "h_a": (Conv(3), _conv5(), _conv5()),
        "g_s": (Deconv(5), Deconv(5), Deconv(5), Deconv(5)),
    },
    "cheng2020-ckbd": {
        "g_a": (_RB_STRIDE, _RB, _RB_STRIDE, _RB, _RB_STRIDE, _RB, Conv(3, 2)),
        "h_a": (Conv(3), Conv(3), Conv(3, 2), Conv(3), Conv(3, 2)),
        "g_s": (_RB, _RB_UP, _RB, _RB_UP, _RB, _RB_UP, _RB, Subpel(3, 2)),
    },
}

#: Image pixels per y position and per z position.
Y_SCALE, Z_SCALE = 16, 64
#: A position far from any border, so that the intervals are the interior ones.
_FAR = 1000


def _transforms(arch: str) -> dict[str, tuple[Layer, ...]]:
    try:
        return TRANSFORMS[arch]
    except KeyError:
        raise ModelError(f"no layer geometry for architecture '{arch}'; it cannot be tiled") from None


def synthesis_halo(arch: str) -> int:
    """Latent positions a tile of ``y`` needs either side so that its pixels are exact."""
    lo, hi = input_interval(_transforms(arch)["g_s"], Y_SCALE * _FAR, Y_SCALE * _FAR + Y_SCALE - 1)
    return max(_FAR - lo, hi - _FAR)


def analysis_halo(arch: str, with_hyper: bool = True) -> int:
    """Image pixels a tile needs beyond its kept part so that its ``y`` (and ``z``) are exact.

    With ``with_hyper`` the kept ``z`` must be exact too, so the field is that of ``h_a(g_a(x))``.
    """
    geometry = _transforms(arch)
    layers = geometry["g_a"] + (geometry["h_a"] if with_hyper else ())
    scale = Z_SCALE if with_hyper else Y_SCALE
    lo, hi = input_interval(layers, _FAR, _FAR)
    return max(scale * _FAR - lo, hi - (scale * _FAR + scale - 1))
