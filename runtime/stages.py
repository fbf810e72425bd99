"""The stage contract shared by the exporter, every backend and the codec.

A model is split into five graphs. Their tensor names are fixed here so that the exporter, the
ONNX Runtime and TensorRT backends and the torch reference backend all agree without talking to
each other.

Latents travel in the *packed checkerboard* layout: a latent ``y`` of shape (1, M, h, w) splits into
its anchor half and non-anchor half, each of shape (1, M, h, w/2), where row ``i`` keeps the
positions of that half in column order. The CPU coder only ever sees these halves.
"""

from __future__ import annotations

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
