"""Tiled analysis and synthesis: halos derived per architecture, tiled runs equal to whole ones."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rgb_array, tiny_model

from ckbd.runtime import memory, tiling
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.memory import MemoryBudget, Plan
from ckbd.runtime.receptive_field import (
    TRANSFORMS,
    Y_SCALE,
    Z_SCALE,
    analysis_halo,
    input_interval,
    synthesis_halo,
)

ARCHS = sorted(TRANSFORMS)


def _support(grad: np.ndarray) -> tuple[int, int]:
    """First and last column where a gradient (any batch/channel/row) is non-zero."""
    cols = np.flatnonzero(np.abs(grad).sum(axis=(0, 1, 2)) > 0)
    return int(cols[0]), int(cols[-1])


def _measured_interval(module, inputs, out_cols: slice) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Input columns the outputs in ``out_cols`` depend on, by autograd through the torch module."""
    import torch

    x = torch.tensor(inputs, dtype=torch.float64, requires_grad=True)
    out = module.double()(x)
    out[..., out_cols].sum().backward()
    return _support(x.grad.numpy())


@pytest.mark.parametrize("arch", ARCHS)
def test_synthesis_halo_matches_the_torch_transform(arch):
    """The derived interval is exactly the set of latent columns one block of pixels depends on."""
    pytest.importorskip("torch")
    model = tiny_model(arch, N=8, M=8)
    width, col = 20, 10
    latent = np.random.default_rng(0).normal(size=(1, 8, 2, width))  # M = 8
    measured = _measured_interval(model.g_s, latent, slice(Y_SCALE * col, Y_SCALE * col + Y_SCALE))
    assert measured == input_interval(TRANSFORMS[arch]["g_s"], Y_SCALE * col, Y_SCALE * col + Y_SCALE - 1)
    assert max(col - measured[0], measured[1] - col) == synthesis_halo(arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_hyper", [False, True])
def test_analysis_halo_matches_the_torch_transform(arch, with_hyper):
    """The pixels one y (or, through h_a, one z) position depends on, as derived."""
    torch = pytest.importorskip("torch")
    model = tiny_model(arch, N=8, M=8)
    scale = Z_SCALE if with_hyper else Y_SCALE
    col = 8
    module = torch.nn.Sequential(model.g_a, model.h_a) if with_hyper else model.g_a
    image = np.random.default_rng(1).random((1, 3, 64, 2 * scale * col))
    measured = _measured_interval(module, image, slice(col, col + 1))
    assert max(scale * col - measured[0], measured[1] - (scale * col + scale - 1)) == analysis_halo(arch, with_hyper)


def test_halos_differ_per_architecture():
    """The residual-block synthesis reaches further than four 5x5 transposed convolutions."""
    assert synthesis_halo("mbt2018-ckbd") == 2
    assert synthesis_halo("cheng2020-ckbd") > synthesis_halo("mbt2018-ckbd")


def test_spans_cover_every_position_once():
    spans = tiling.spans(100, 30, 8)
    kept = [i for s in spans for i in range(s.keep_start, s.keep_stop)]
    assert kept == list(range(100))
    assert all(s.start == max(0, s.keep_start - 8) and s.stop == min(100, s.keep_stop + 8) for s in spans)


@pytest.fixture(scope="module")
def codecs():
    return Encoder.open(threads=1), Decoder.open(threads=1)


@pytest.fixture(scope="module")
def image():
    return rgb_array(384, 448, seed=3)


def _runner(codec):  # type: ignore[no-untyped-def]
    return lambda stage, feeds, keep=(): codec.model.runner(stage).run(feeds)


def test_tiled_analysis_gives_the_whole_image_outputs(codecs, image):
    encoder, _ = codecs
    m = encoder.manifest
    whole = tiling.analyse(_runner(encoder), image, Plan(True, 0, 0, 0, 0), m.N, m.M)
    halo = -(-analysis_halo(m.arch) // 64) * 64
    tiled = tiling.analyse(_runner(encoder), image, Plan(False, 128, 192, halo, 0), m.N, m.M)
    np.testing.assert_array_equal(tiled["z_symbols"], whole["z_symbols"])
    for name in ("y_anchor", "y_nonanchor"):
        assert np.abs(tiled[name] - whole[name]).max() <= 1e-4


def test_too_small_a_halo_is_visible(codecs, image):
    """The check above can fail: a halo below the receptive field changes z."""
    encoder, _ = codecs
    m = encoder.manifest
    whole = tiling.analyse(_runner(encoder), image, Plan(True, 0, 0, 0, 0), m.N, m.M)
    short = tiling.analyse(_runner(encoder), image, Plan(False, 128, 128, 64, 0), m.N, m.M)
    assert not np.array_equal(short["z_symbols"], whole["z_symbols"])


def _just_below_whole(plan, arch: str, N: int, M: int, shape: tuple[int, ...], **kw) -> MemoryBudget:  # type: ignore[no-untyped-def]
    """A budget one byte short of the whole-image estimate (the process taken to hold nothing)."""
    whole = plan(arch, N, M, shape[0], shape[1], MemoryBudget(1 << 40), **kw)
    assert whole.whole
    return MemoryBudget(whole.estimate - 1)


def test_codec_tiles_within_a_budget_and_symbols_are_identical(codecs, monkeypatch):
    """A budget too small for the whole image: both directions tile, the symbols and bytes do not
    change, and the tiled decode is within one grey level of the whole one."""
    encoder, decoder = codecs
    m = encoder.manifest
    image = rgb_array(512, 640, seed=5)
    whole_enc = encoder.encode_detailed(image, estimate=False)
    whole_dec = decoder.decode_detailed(whole_enc.data)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    encoder.model.memory = _just_below_whole(memory.plan_analysis, m.arch, m.N, m.M, image.shape)
    decoder.model.memory = _just_below_whole(memory.plan_synthesis, m.arch, m.N, m.M, image.shape,
                                             latents_resident=True)
    try:
        assert not memory.plan_analysis(m.arch, m.N, m.M, 512, 640, encoder.model.memory).whole
        assert not memory.plan_synthesis(m.arch, m.N, m.M, 512, 640, decoder.model.memory,
                                         latents_resident=True).whole
        tiled_enc = encoder.encode_detailed(image, estimate=False)
        tiled_dec = decoder.decode_detailed(whole_enc.data)
    finally:
        encoder.model.memory = decoder.model.memory = MemoryBudget()
    assert tiled_enc.latents.equals(whole_enc.latents)
    assert tiled_enc.data == whole_enc.data
    assert np.abs(tiled_dec.image.astype(int) - whole_dec.image).max() <= 1


def test_tiny_synthesis_tiles_stay_within_one_grey_level(codecs, image):
    encoder, decoder = codecs
    result = decoder.decode_detailed(encoder.encode(image))
    a_hat, n_hat = result.latents.anchor_hat, result.latents.nonanchor_hat
    halo = synthesis_halo(decoder.manifest.arch)
    for core in (4, 6):
        tiled = tiling.synthesise(_runner(decoder), a_hat, n_hat, Plan(False, core, core + 2, halo, 0), *image.shape[:2])
        assert tiled.shape == result.image.shape
        assert np.abs(tiled.astype(int) - result.image).max() <= 1
