"""The stage contract shared by the exporter, every backend and the codec.

A model is split into five graphs. Their tensor names are fixed here so that the exporter, the
ONNX Runtime and TensorRT backends and the torch reference backend all agree without talking to
each other.

Latents travel in the *packed checkerboard* layout: a latent ``y`` of shape (1, M, h, w) splits into
its anchor half and non-anchor half, each of shape (1, M, h, w/2), where row ``i`` keeps the
positions of that half in column order. The CPU coder only ever sees these halves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ANALYSIS = "analysis"
HYPER_SYNTHESIS = "hyper_synthesis"
ANCHOR_PARAMS = "anchor_params"
NONANCHOR_PARAMS = "nonanchor_params"
LATENT_SYNTHESIS = "latent_synthesis"

DECODER_STAGES = (HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS, LATENT_SYNTHESIS)
ALL_STAGES = (ANALYSIS, *DECODER_STAGES)
#: Stages whose outputs decide the scale indexes the bitstream depends on.
INDEX_STAGES = (HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS)


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; symbolic dims are strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


# name -> (inputs, outputs). Shapes use symbols: H, W image size (multiple of 64); h = H/16, w = W/16.
STAGE_IO: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    ANALYSIS: (
        (TensorSpec("image", "float32", (1, 3, "H", "W")),),
        (
            TensorSpec("y_anchor", "float32", (1, "M", "h", "w/2")),
            TensorSpec("y_nonanchor", "float32", (1, "M", "h", "w/2")),
            TensorSpec("z_symbols", "int32", (1, "N", "h/4", "w/4")),
        ),
    ),
    HYPER_SYNTHESIS: (
        (TensorSpec("z_symbols", "int32", (1, "N", "h/4", "w/4")),),
        (TensorSpec("hyper", "float32", (1, "2M", "h", "w")),),
    ),
    ANCHOR_PARAMS: (
        (TensorSpec("hyper", "float32", (1, "2M", "h", "w")),),
        (
            TensorSpec("anchor_indexes", "int32", (1, "M", "h", "w/2")),
            TensorSpec("anchor_means", "float32", (1, "M", "h", "w/2")),
        ),
    ),
    NONANCHOR_PARAMS: (
        (
            TensorSpec("hyper", "float32", (1, "2M", "h", "w")),
            TensorSpec("anchor_hat", "float32", (1, "M", "h", "w/2")),
        ),
        (
            TensorSpec("nonanchor_indexes", "int32", (1, "M", "h", "w/2")),
            TensorSpec("nonanchor_means", "float32", (1, "M", "h", "w/2")),
        ),
    ),
    LATENT_SYNTHESIS: (
        (
            TensorSpec("anchor_hat", "float32", (1, "M", "h", "w/2")),
            TensorSpec("nonanchor_hat", "float32", (1, "M", "h", "w/2")),
        ),
        (TensorSpec("image", "uint8", (1, "H", "W", 3)),),
    ),
}

#: The image side is padded to a multiple of this before analysis (g_a /16, h_a /4).
PAD_MULTIPLE = 64
#: Downsampling of y relative to the image.
Y_STRIDE = 16
#: Downsampling of z relative to the image.
Z_STRIDE = 64

#: Symbols that name channel counts (fixed per model); the others are spatial (dynamic in graphs).
CHANNEL_SYMBOLS = frozenset({"N", "M", "2M"})
_DIM = re.compile(r"^(\d*)([A-Za-z]+)(?:/(\d+))?$")


def symbol_values(N: int, M: int, height: int, width: int) -> dict[str, int]:
    """Values of the base symbols of :data:`STAGE_IO` for one model and a padded image size."""
    return {"N": N, "M": M, "H": height, "W": width, "h": height // Y_STRIDE, "w": width // Y_STRIDE}


def resolve_dim(dim: int | str, values: dict[str, int]) -> int:
    """Evaluate a dimension of :data:`STAGE_IO` such as ``"w/2"``, ``"h/4"`` or ``"2M"``: the one
    parser of these symbols, used by the exporter, the engine builder and the profiles."""
    from ckbd.errors import CkbdError

    if isinstance(dim, int):
        return dim
    match = _DIM.match(dim)
    if not match or match.group(2) not in values:
        raise CkbdError(f"cannot evaluate tensor dimension '{dim}'")
    value = int(match.group(1) or 1) * values[match.group(2)]
    divisor = int(match.group(3) or 1)
    if value % divisor:
        raise CkbdError(f"dimension '{dim}' = {value}/{divisor} is not whole; pad the image to {PAD_MULTIPLE}")
    return value // divisor


def padded_image_size(stage: str, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int] | None:
    """The padded image size (height, width) a run of ``stage`` with these input shapes works on:
    :func:`resolve_dim` read backwards, from the first input whose rank matches (None: cannot tell)."""
    for spec in STAGE_IO.get(stage, ((), ()))[0]:
        shape = shapes.get(spec.name)
        if shape is None or len(shape) != len(spec.shape):
            continue
        sides = []
        for dim, size in zip(spec.shape[-2:], shape[-2:]):
            match = _DIM.match(dim) if isinstance(dim, str) else None
            if not match or match.group(2) in CHANNEL_SYMBOLS:
                return None
            base = int(size) * int(match.group(3) or 1) // int(match.group(1) or 1)
            sides.append(base if match.group(2) in ("H", "W") else base * Y_STRIDE)
        return sides[0], sides[1]
    return None


def stage_shapes(stage: str, N: int, M: int, height: int, width: int, outputs: bool = False,
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete input (or output) shapes of ``stage`` for a padded image size."""
    from ckbd.errors import CkbdError

    if stage not in STAGE_IO:
        raise CkbdError(f"unknown stage '{stage}'; stages are {', '.join(ALL_STAGES)}")
    values = symbol_values(N, M, height, width)
    return {spec.name: tuple(resolve_dim(d, values) for d in spec.shape) for spec in STAGE_IO[stage][outputs]}
