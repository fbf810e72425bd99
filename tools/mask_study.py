"""The context-pattern study of He et al. 2021 (§4.1, Table 1, Figure 4) on a random-mask model.

A trained ``mbt2018-random-mask`` model evaluates any 5x5 context pattern by feeding it as the
mask. For every image the latents (``round(y)``, z and the hyper features) are computed once;
each mask only re-runs the context convolution and the entropy parameters, so every mask codes
the same latents and the distortion is the same for all of them.

Rates are ideal code lengths: -log2 of the model's own likelihoods (the Gaussian conditional
for y, the factorized prior for z), i.e. what an exact entropy coder would approach, without
coder overhead. bpp is the mean over images of each image's bits per original pixel. A mask is
applied at every position at once, so most patterns are not decodable as such (the paper's
study has the same caveat): the numbers show what each neighbour could save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckbd.errors import CkbdError, ModelError
from ckbd.models.architectures import HyperpriorModel
from ckbd.models.entropy import gaussian_likelihood
from ckbd.models.layers import checkerboard_kernel_mask, raster_kernel_mask
from ckbd.models.random_mask import CENTRE, KERNEL, RandomMaskModel
from ckbd.progress import progress as progress_bar

#: The paper's Table 1 (N=192, its λ, Kodak): mask id -> (bpp, rate saving %).
PAPER_TABLE1 = {
    "none": (0.4332, 0.0), "serial3x3": (0.3928, 9.3), "serial5x5": (0.3817, 11.9),
    "checkerboard4": (0.3651, 15.7), "checkerboard5x5": (0.3648, 15.8), "all8": (0.3649, 15.8),
}


def _taps(offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    mask = torch.zeros(KERNEL, KERNEL)
    for dy, dx in offsets:
        mask[CENTRE + dy, CENTRE + dx] = 1.0
    return mask


def table1_masks() -> dict[str, torch.Tensor]:
    """The patterns of Table 1 / Figure 1, as (5, 5) masks centred on the current latent."""
    all8 = torch.zeros(KERNEL, KERNEL)
    all8[CENTRE - 1 : CENTRE + 2, CENTRE - 1 : CENTRE + 2] = 1.0
    all8[CENTRE, CENTRE] = 0.0
    return {
        "none": torch.zeros(KERNEL, KERNEL),
        "serial3x3": _taps([(-1, -1), (-1, 0), (-1, 1), (0, -1)]),
        "serial5x5": raster_kernel_mask(KERNEL),
        "checkerboard4": _taps([(-1, 0), (1, 0), (0, -1), (0, 1)]),
        "checkerboard5x5": checkerboard_kernel_mask(KERNEL),
        "all8": all8,
    }


def single_reference_offsets() -> list[tuple[int, int]]:
    """The 24 (dy, dx) of the 5x5 window other than the centre, in raster order."""
    r = range(-CENTRE, CENTRE + 1)
    return [(dy, dx) for dy in r for dx in r if (dy, dx) != (0, 0)]


def parse_mask(text: str) -> torch.Tensor:
    """A 5x5 pattern from 25 characters 0/1 (rows may be separated by '/', ',' or spaces)."""
    digits = [c for c in text if c not in "/, \t\n"]
    if len(digits) != KERNEL * KERNEL or any(c not in "01" for c in digits):
        raise CkbdError(f"--mask needs 25 characters 0/1 (5 rows of 5, e.g. 00000/00100/01010/00100/00000), "
                        f"got {text!r}")
    mask = torch.tensor([float(c) for c in digits]).reshape(KERNEL, KERNEL)
    if mask[CENTRE, CENTRE]:
        raise CkbdError(f"--mask {text!r} sets the centre: a latent cannot be its own context")
    return mask


def mask_string(mask: torch.Tensor) -> str:
    return "/".join("".join(str(int(v)) for v in row) for row in mask.tolist())


@dataclass
class MaskRow:
    mask: str
    references: int
    bpp: float
    rate_saving_pct: float
    dy: int | None = None
    dx: int | None = None


@dataclass
class MaskStudy:
    checkpoint: str
    config: dict[str, Any]
    training: dict[str, Any]
    images: list[str]
    psnr: float  # the same for every mask (same latents)
    rate: str
    table1: list[MaskRow] = field(default_factory=list)
    single_reference: list[MaskRow] = field(default_factory=list)
    custom: list[MaskRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        for row in raw["table1"] + raw["custom"]:
            del row["dy"], row["dx"]
        for row in raw["single_reference"]:
            del row["mask"]
        return raw


RATE_NOTE = ("ideal code length -log2 p of the model's entropy model (y Gaussian conditional + z factorized prior), "
             "mean bpp over images")


def mask_bits(model: RandomMaskModel, y_hat: torch.Tensor, hyper: torch.Tensor, z_likelihoods: torch.Tensor,
              masks: Sequence[torch.Tensor]) -> list[float]:
    """Bits of one image's latents (y and z) under every mask; only the context part is re-run."""
    z_bits = float(-torch.log2(z_likelihoods).sum())
    bits = []
    for mask in masks:
        scales, means = model.params_with_mask(y_hat, hyper, mask)
        bits.append(z_bits + float(-torch.log2(gaussian_likelihood(y_hat, scales, means)).sum()))
    return bits


def run_study(model: HyperpriorModel, images: Sequence[Path], custom: Sequence[str] = (), checkpoint: str = "",
              training: dict[str, Any] | None = None, progress: bool = True) -> MaskStudy:
    """Mean bpp of every mask over ``images``, and the savings relative to the all-zero mask."""
    from ckbd.runtime.codec import to_network_input
    from ckbd.runtime.imageio import read_image

    if not isinstance(model, RandomMaskModel):
        raise ModelError(f"the mask study needs an mbt2018-random-mask checkpoint, not {model.config.arch}")
    if not images:
        raise CkbdError("no images to study")
    t1 = table1_masks()
    singles = single_reference_offsets()
    customs = [parse_mask(text) for text in custom]
    masks = [*t1.values(), *(_taps([o]) for o in singles), *customs]
    bpp_sum = [0.0] * len(masks)
    mse_sum = 0.0
    model.eval()
    with torch.inference_mode(), progress_bar(total=len(images), desc="mask study", unit="image",
                                              enabled=progress) as bar:
        for path in images:
            image = read_image(path)
            h, w = image.shape[:2]
            y_hat, hyper, z_likelihoods = model.latents(torch.from_numpy(to_network_input(image)))
            bits = mask_bits(model, y_hat, hyper, z_likelihoods, masks)
            bpp_sum = [s + b / (h * w) for s, b in zip(bpp_sum, bits)]
            pixels = torch.round(model.g_s(y_hat).clamp(0, 1)[0, :, :h, :w] * 255).permute(1, 2, 0)
            mse_sum += float(torch.mean((pixels - torch.tensor(image, dtype=torch.float32)) ** 2))
            bar.update(1)
    bpp = [s / len(images) for s in bpp_sum]
    base = bpp[0]

    def row(i: int, mask: torch.Tensor, name: str, dy: int | None = None, dx: int | None = None) -> MaskRow:
        return MaskRow(name, int(mask.sum()), bpp[i], 100 * (base - bpp[i]) / base, dy, dx)

    mse = mse_sum / len(images)
    study = MaskStudy(checkpoint, model.config.to_dict(), training or {}, [Path(p).name for p in images],
                      10 * math.log10(255**2 / max(mse, 1e-12)), RATE_NOTE)
    study.table1 = [row(i, m, name) for i, (name, m) in enumerate(t1.items())]
    offset = len(t1)
    study.single_reference = [row(offset + i, masks[offset + i], mask_string(masks[offset + i]), dy, dx)
                              for i, (dy, dx) in enumerate(singles)]
    offset += len(singles)
    study.custom = [row(offset + i, m, mask_string(m)) for i, m in enumerate(customs)]
    return study


def saving_grid(study: MaskStudy) -> list[list[float | None]]:
    """The single-reference savings as a 5x5 grid (None at the centre), for Figure 4."""
    grid: list[list[float | None]] = [[None] * KERNEL for _ in range(KERNEL)]
    for r in study.single_reference:
        assert r.dy is not None and r.dx is not None
        grid[CENTRE + r.dy][CENTRE + r.dx] = r.rate_saving_pct
    return grid


def format_table(study: MaskStudy) -> str:
    """Table 1 (measured next to the paper) and the Figure 4 grid, as markdown."""
    lines = ["| mask | references | bpp | rate saving | paper bpp | paper saving |", "|---|---:|---:|---:|---:|---:|"]
    for r in study.table1 + study.custom:
        paper_bpp, paper_saving = PAPER_TABLE1.get(r.mask, (None, None))
        paper = f"{paper_bpp:.4f} | {paper_saving:.1f} %" if paper_bpp is not None else " | "
        lines.append(f"| {r.mask} | {r.references} | {r.bpp:.4f} | {r.rate_saving_pct:.1f} % | {paper} |")
    lines += ["", "Single-reference rate saving (%), rows dy = -2..2, columns dx = -2..2:", "",
              "| dy \\ dx | -2 | -1 | 0 | 1 | 2 |", "|---|---:|---:|---:|---:|---:|"]
    for dy, cells in zip(range(-CENTRE, CENTRE + 1), saving_grid(study)):
        lines.append(f"| {dy} | " + " | ".join("·" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)
