"""Analysis and latent synthesis on overlapping tiles, within a memory budget.

The convolutional transforms are the only stages whose working memory grows with the image at
image resolution (hundreds of bytes per pixel). Run on a tile plus a halo of real neighbours at
least the receptive field (:mod:`ckbd.runtime.receptive_field`), the kept centre of each tile is
the same function of the same inputs as in the whole-image run; the graphs have symbolic H/W, so
the very same ONNX graph or engine runs on a tile. Tiles that touch the image border start or end
at the border, so the convolutions' zero padding is seen exactly where the whole-image run sees
it. Float results may still differ in the last bits (the convolution kernels may reorder sums for
another shape), which can move a decoded pixel by one grey level, or, very rarely, an encoder
``y`` across a rounding boundary; tiling is a property of the run, never of the stream.

Tile grids are aligned so that the packed checkerboard halves slice cleanly: analysis tiles start
on multiples of 64 pixels (the z grid, which keeps y's rows and packed columns even), synthesis
tiles on even latent positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ckbd.runtime.backend import Tensor, to_host
from ckbd.runtime.bitstream import padded_size
from ckbd.runtime.memory import Plan, plan_analysis, plan_synthesis, release_free_memory
from ckbd.runtime.stages import ANALYSIS, LATENT_SYNTHESIS, Y_STRIDE, Z_STRIDE
from ckbd.runtime.working_memory import releasing_working_memory

if TYPE_CHECKING:
    from ckbd.runtime.model import CodecModel

#: ``run(stage, feeds)``: one graph run (the codec's timed runner).
StageRun = Callable[[str, dict[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class Span:
    """One axis of a tile: ``start:stop`` is read (kept part plus halo), ``keep_start:keep_stop`` kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def spans(length: int, core: int, halo: int) -> list[Span]:
    """Cut ``0:length`` into kept runs of ``core`` (the last one shorter), each read with ``halo``."""
    out = []
    for keep in range(0, length, core):
        keep_stop = min(keep + core, length)
        out.append(Span(max(0, keep - halo), min(length, keep_stop + halo), keep, keep_stop))
    return out


def tiles(rows: int, cols: int, plan: Plan) -> Iterator[tuple[Span, Span]]:
    """Row-major tiles of a ``rows x cols`` grid (whole-image plan: one tile, no halo)."""
    for r in spans(rows, plan.core_rows, plan.halo):
        for c in spans(cols, plan.core_cols, plan.halo):
            yield r, c


def network_tile(image: np.ndarray, rows: Span, cols: Span) -> np.ndarray:
    """Float NCHW input for padded-image rows/cols, edge-padded beyond the image as in the whole run."""
    height, width = image.shape[:2]
    r = np.minimum(np.arange(rows.start, rows.stop), height - 1)
    c = np.minimum(np.arange(cols.start, cols.stop), width - 1)
    tile = image[r[:, None], c[None, :]].transpose(2, 0, 1)[None]
    return np.ascontiguousarray(tile, dtype=np.float32) / np.float32(255.0)


def network_input(image: np.ndarray) -> np.ndarray:
    """The whole edge-padded image as float NCHW: the one padding rule, whole or tiled."""
    padded_h, padded_w = padded_size(*image.shape[:2])
    return network_tile(image, Span(0, padded_h, 0, padded_h), Span(0, padded_w, 0, padded_w))


def analyse(run: StageRun, image: np.ndarray, plan: Plan, N: int, M: int) -> dict[str, np.ndarray]:
    """The analysis outputs (packed y halves, z symbols) of a whole image, tile by tile."""
    padded_h, padded_w = padded_size(*image.shape[:2])
    h, w = padded_h // Y_STRIDE, padded_w // Y_STRIDE
    if plan.whole:
        with _working_memory(plan):
            out = run(ANALYSIS, {"image": network_input(image)})
        return {k: to_host(v) for k, v in out.items()}
    y_anchor = np.empty((1, M, h, w // 2), np.float32)
    y_nonanchor = np.empty_like(y_anchor)
    z = np.empty((1, N, padded_h // Z_STRIDE, padded_w // Z_STRIDE), np.int32)
    with _working_memory(plan):
        for rows, cols in tiles(padded_h, padded_w, plan):
            out = run(ANALYSIS, {"image": network_tile(image, rows, cols)})
            for name, target, scale, col_scale in (("y_anchor", y_anchor, Y_STRIDE, 2 * Y_STRIDE),
                                                   ("y_nonanchor", y_nonanchor, Y_STRIDE, 2 * Y_STRIDE),
                                                   ("z_symbols", z, Z_STRIDE, Z_STRIDE)):
                _keep(target, to_host(out[name]), rows, cols, scale, col_scale)
            del out
            _trim_after(rows, cols, 1)
    return {"y_anchor": y_anchor, "y_nonanchor": y_nonanchor, "z_symbols": z}


def _working_memory(plan: Plan) -> AbstractContextManager[None]:
    """Tiles, and whole runs without room to keep their buffers, hand their working memory back:
    the plan's budget was computed that way."""
    return nullcontext() if plan.retains else releasing_working_memory()


#: Tiles from this many pixels on hand their freed memory back before the next one (a trim costs
#: tens of milliseconds; without it the C heap grows from tile to tile).
TRIM_PIXELS = 1 << 20


def _trim_after(rows: Span, cols: Span, scale: int) -> None:
    if (rows.stop - rows.start) * (cols.stop - cols.start) * scale * scale >= TRIM_PIXELS:
        release_free_memory()


def _keep(target: np.ndarray, tile: np.ndarray, rows: Span, cols: Span, scale: int, col_scale: int) -> None:
    """Copy a tile's kept part into ``target``; pixel spans become positions at ``scale``."""
    r0, r1 = (rows.keep_start - rows.start) // scale, (rows.keep_stop - rows.start) // scale
    c0, c1 = (cols.keep_start - cols.start) // col_scale, (cols.keep_stop - cols.start) // col_scale
    target[:, :, rows.keep_start // scale: rows.keep_stop // scale,
           cols.keep_start // col_scale: cols.keep_stop // col_scale] = tile[:, :, r0:r1, c0:c1]


def synthesise(run: StageRun, anchor_hat: np.ndarray, nonanchor_hat: np.ndarray, plan: Plan,
               height: int, width: int) -> np.ndarray:
    """The decoded image (``height x width x 3`` uint8) from the packed halves, tile by tile."""
    h, w = anchor_hat.shape[2], 2 * anchor_hat.shape[3]
    if plan.whole:
        with _working_memory(plan):
            out = run(LATENT_SYNTHESIS, {"anchor_hat": anchor_hat, "nonanchor_hat": nonanchor_hat})
        return np.ascontiguousarray(to_host(out["image"])[0, :height, :width])
    image = np.empty((height, width, 3), np.uint8)
    with _working_memory(plan):
        for rows, cols in tiles(h, w, plan):
            top, left = rows.keep_start * Y_STRIDE, cols.keep_start * Y_STRIDE
            bottom, right = min(rows.keep_stop * Y_STRIDE, height), min(cols.keep_stop * Y_STRIDE, width)
            if top >= bottom or left >= right:
                continue  # a tile of padding only
            halves = [np.ascontiguousarray(x[:, :, rows.start:rows.stop, cols.start // 2:cols.stop // 2])
                      for x in (anchor_hat, nonanchor_hat)]
            out = to_host(run(LATENT_SYNTHESIS, {"anchor_hat": halves[0], "nonanchor_hat": halves[1]})["image"])
            dy, dx = rows.start * Y_STRIDE, cols.start * Y_STRIDE
            image[top:bottom, left:right] = out[0, top - dy:bottom - dy, left - dx:right - dx]
            del out, halves
            _trim_after(rows, cols, Y_STRIDE)
    return image


def analyse_image(run: StageRun, model: CodecModel, image: np.ndarray) -> dict[str, np.ndarray]:
    """Analysis of ``image`` whole or in tiles, as the model's memory budget (and engine) allow."""
    m = model.manifest
    cap = max_input_shape(model.runner(ANALYSIS), "image")
    plan = plan_analysis(m.arch, m.N, m.M, image.shape[0], image.shape[1], model.memory,
                         None if cap is None else (cap[2], cap[3]))
    out = analyse(run, image, plan, m.N, m.M)
    release_free_memory()  # the entropy stages come next; the plan counted their peak alone
    return out


def synthesise_image(run: StageRun, model: CodecModel, anchor_hat: Tensor, nonanchor_hat: Tensor,
                     height: int, width: int) -> np.ndarray:
    """Latent synthesis whole or in tiles, as the model's memory budget (and engine) allow."""
    m = model.manifest
    release_free_memory()  # what the entropy stages freed, so that the resident set is what they keep
    cap = max_input_shape(model.runner(LATENT_SYNTHESIS), "anchor_hat")
    plan = plan_synthesis(m.arch, m.N, m.M, height, width, model.memory,
                          None if cap is None else (cap[2], 2 * cap[3]), latents_resident=True)
    return synthesise(run, to_host(anchor_hat), to_host(nonanchor_hat), plan, height, width)


def max_input_shape(runner: object, name: str) -> tuple[int, ...] | None:
    """The largest shape of input ``name`` a runner accepts (a TensorRT profile's max), None if any.

    Runners with a bounded input size (engines) expose ``max_input_shape(name)``; the tile plan keeps
    every run inside it, so one engine built for a tile serves every image size.
    """
    method = getattr(runner, "max_input_shape", None)
    return None if method is None else method(name)
