"""Known-answer vectors of an integer-path model: which inputs, and the int64 reference's outputs.

Cases (small: z is 2x2 or 1x2, a 128x128 or 64x128 image; see :mod:`ckbd.runtime.known_answers` for the file):

- ``photo N``: the encoder's z symbols and quantised anchors of a calibration photo's centre crop,
  as the codec would feed them;
- ``saturating z``: z symbols at and beyond the saturation limit (int32 extremes included), with
  anchors at and beyond theirs;
- ``saturating hyper``: hyper activations at +/- their bound, the signs of each position matching
  one output channel's weights of the first parameter layer, so its accumulator reaches the worst
  case ``sum(|w|) * bound`` the exactness proof allows.

Everything is deterministic: photos picked by name, one fixed seed. ``ckbd export --default`` reuses
the shipped file's inputs and recomputes the outputs (:func:`reproduce`), so it rewrites the shipped
file byte for byte on any machine, whatever its float analysis would round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ckbd.export.stage_modules import plain_stage_modules, require_checkerboard
from ckbd.models.architectures import HyperpriorModel
from ckbd.runtime import intparams_reference as ref
from ckbd.runtime.coder import dequantize, quantize
from ckbd.runtime.entropy_tables import default_scale_table
from ckbd.runtime.intparams import ANCHOR_LIMIT, MEAN_FRAC, Z_LIMIT, IntegerParams
from ckbd.runtime.known_answers import KnownAnswers
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.stages import ANALYSIS, INDEX_STAGES, STAGE_IO
from ckbd.runtime.tiling import network_input

#: Side of the square crops (a 2x2 z, an 8x8 y) and how many photos.
PHOTO_SIDE = 128
PHOTO_COUNT = 2
SEED = 31
#: The z grid of the saturating cases (a 64x128 image: small, still with interior positions).
Z_GRID = (1, 2)
_INPUTS = {spec.name for stage in INDEX_STAGES for spec in STAGE_IO[stage][0]}


def _crop(image: np.ndarray, side: int = PHOTO_SIDE) -> np.ndarray:
    """Centre crop to ``side`` square, edge-padded when the photo is smaller."""
    h, w = image.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    crop = image[top : top + side, left : left + side]
    pad = ((0, side - crop.shape[0]), (0, side - crop.shape[1]), (0, 0))
    return np.ascontiguousarray(np.pad(crop, pad, mode="edge"))


def synthetic_photos(count: int = PHOTO_COUNT) -> list[np.ndarray]:
    """Smooth deterministic images, for exports given no photos (tests, benchmarks)."""
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:PHOTO_SIDE, 0:PHOTO_SIDE].astype(np.float64)
    images = []
    for _ in range(count):
        waves = [np.sin(yy * rng.uniform(0.02, 0.2) + xx * rng.uniform(0.02, 0.2) + rng.uniform(0, 6))
                 for _ in range(3)]
        noise = rng.normal(0, 0.05, (PHOTO_SIDE, PHOTO_SIDE, 3))
        images.append(np.clip((0.5 + 0.35 * np.stack(waves, -1) + noise) * 255, 0, 255).astype(np.uint8))
    return images


def photos_from(folder: Path, count: int = PHOTO_COUNT) -> list[np.ndarray]:
    """``count`` photos spread evenly over ``folder`` (sorted by name), centre-cropped."""
    from ckbd.export.integer_quantize import calibration_images

    return [_crop(image) for image in calibration_images(folder, count=count, side=PHOTO_SIDE)]


def _completed(spec: IntegerParams, case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The case's inputs plus every output the reference computes from them (contract dtypes)."""
    out = dict(case)
    if "z_symbols" in case:
        out["hyper"] = ref.hyper_synthesis(spec, case["z_symbols"]).astype(np.float32)
    hyper = out["hyper"].astype(np.int64)
    out["anchor_indexes"], means = ref.anchor_params(spec, hyper)
    out["anchor_means"] = ref.means_to_float(means)
    if "anchor_hat" in case:
        out["nonanchor_indexes"], means = ref.nonanchor_params(spec, hyper, case["anchor_hat"])
        out["nonanchor_means"] = ref.means_to_float(means)
    return out


@torch.no_grad()
def _photo_case(model: HyperpriorModel, spec: IntegerParams, photo: np.ndarray) -> dict[str, np.ndarray]:
    analysis = plain_stage_modules(model, default_scale_table(), (ANALYSIS,))[ANALYSIS]
    y_anchor, _, z = analysis(torch.from_numpy(network_input(photo)))
    z_symbols = z.numpy().astype(np.int32)
    _, means = ref.anchor_params(spec, ref.hyper_synthesis(spec, z_symbols))
    means_float = ref.means_to_float(means)
    anchor_hat = dequantize(quantize(y_anchor.numpy(), means_float), means_float)
    return {"z_symbols": z_symbols, "anchor_hat": anchor_hat}


def _extreme_anchors(spec: IntegerParams, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Decoded anchors at, just inside and beyond the saturation limit, and ordinary fractions."""
    unit = 2.0**-MEAN_FRAC
    choices = np.array([ANCHOR_LIMIT * 4, ANCHOR_LIMIT, ANCHOR_LIMIT - unit, 3 + 5 * unit, unit, 0.0])
    values = rng.choice(choices, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return values.astype(np.float32)


def _saturating_z(spec: IntegerParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    extremes = np.array([2**31 - 1, Z_LIMIT + 1, Z_LIMIT, Z_LIMIT - 1, 1, 0], dtype=np.int64)
    shape = (1, spec.N, *Z_GRID)
    z = rng.choice(extremes, size=shape) * rng.choice([-1, 1], size=shape)
    h, w = Z_GRID[0] * 4, Z_GRID[1] * 4
    return {"z_symbols": z.astype(np.int32), "anchor_hat": _extreme_anchors(spec, (1, spec.M, h, w // 2), rng)}


def _saturating_hyper(spec: IntegerParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    bound = spec.hyper[-1].bound
    h, w = Z_GRID[0] * 4, Z_GRID[1] * 4
    anchors = ref.unpack_anchors(np.ones((1, 1, h, w // 2), np.int64), spec.parity)[0, 0] != 0
    hyper = np.empty((1, 2 * spec.M, h, w), np.float32)
    for i in range(h):
        for j in range(w):
            weight = (spec.anchor if anchors[i, j] else spec.nonanchor).layers[0].weight[:, : 2 * spec.M, 0, 0]
            row = weight[(i * w + j) % weight.shape[0]]
            hyper[0, :, i, j] = np.where(row < 0, -bound, bound)
    return {"hyper": hyper, "anchor_hat": _extreme_anchors(spec, (1, spec.M, h, w // 2), rng)}


def generate(model: HyperpriorModel, spec: IntegerParams, photos: Sequence[np.ndarray] = ()) -> KnownAnswers:
    """Vectors of ``model``'s integer path from ``photos`` (centre-cropped; none: synthetic ones)."""
    model = require_checkerboard(model).eval()
    rng = np.random.default_rng(SEED)
    cases = {f"photo {i}": _photo_case(model, spec, _crop(p)) for i, p in enumerate(photos or synthetic_photos())}
    cases["saturating z"] = _saturating_z(spec, rng)
    cases["saturating hyper"] = _saturating_hyper(spec, rng)
    return KnownAnswers({name: _completed(spec, case) for name, case in cases.items()})


def reproduce(inputs: KnownAnswers, spec: IntegerParams) -> KnownAnswers:
    """The same cases' inputs with the reference's outputs recomputed (``export --default``)."""
    return KnownAnswers({name: _completed(spec, {k: v for k, v in case.items() if k in _INPUTS
                                                  and not (k == "hyper" and "z_symbols" in case)})
                         for name, case in inputs.cases.items()})


def reproduce_shipped(package: ModelPackage, spec: IntegerParams) -> KnownAnswers | None:
    """The shipped model's vector inputs re-answered for ``spec``, so that ``export --default`` rewrites the
    shipped file byte for byte (None when the package has no vectors)."""
    path = package.known_answers_path()  # verified against the package's manifest
    return None if path is None else reproduce(KnownAnswers.load(path), spec)
