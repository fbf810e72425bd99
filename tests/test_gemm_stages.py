"""The float32 GEMM-form integer stages equal the int64 reference element by element.

Random, saturating and encoder-latent inputs on tiny models of both checkerboard architectures
(and both anchor parities); the reference is ``runtime/intparams_reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import rgb_array, tiny_model

from ckbd.export.gemm_stages import BAND_BYTES, GemmConv, exact_float32, gemm_form, gemm_stage_modules
from ckbd.export.integer_quantize import quantize_model
from ckbd.runtime import intparams_reference as ref
from ckbd.runtime.entropy_tables import default_scale_table
from ckbd.runtime.intparams import IntegerParams

MODELS = [("mbt2018-ckbd", "even"), ("cheng2020-ckbd", "even"), ("cheng2020-ckbd", "odd")]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}-{m[1]}")
def quantized(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """(model, spec) per architecture and parity."""
    arch, parity = request.param
    model = tiny_model(arch, parity=parity)
    spec = quantize_model(model, [rgb_array(128, 192, seed=s) for s in range(3)], default_scale_table())
    return model, spec


def _gemm(spec: IntegerParams, z: np.ndarray, anchor_hat: np.ndarray) -> dict[str, np.ndarray]:
    modules = gemm_stage_modules(spec)
    with torch.inference_mode():
        hyper = modules["hyper_synthesis"](torch.from_numpy(z))
        a_idx, a_mean = modules["anchor_params"](hyper)
        n_idx, n_mean = modules["nonanchor_params"](hyper, torch.from_numpy(anchor_hat))
    got = {"hyper": hyper, "anchor_indexes": a_idx, "anchor_means": a_mean,
           "nonanchor_indexes": n_idx, "nonanchor_means": n_mean}
    return {name: value.numpy() for name, value in got.items()}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _random_inputs(spec: IntegerParams, seed: int, spread: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """z symbols and decoded anchors (symbols plus the reference's own fixed-point means)."""
    rng = np.random.default_rng(seed)
    z = rng.integers(-spread, spread + 1, size=(1, spec.N, *shape)).astype(np.int32)
    _, means = ref.anchor_params(spec, ref.hyper_synthesis(spec, z))
    symbols = rng.integers(-4 * spread, 4 * spread + 1, size=means.shape)
    return z, (symbols + ref.means_to_float(means)).astype(np.float32)


@pytest.mark.parametrize(("seed", "spread", "shape"), [(0, 3, (2, 3)), (1, 12, (3, 2)), (2, 40, (1, 1))])
def test_random_inputs_equal_the_int64_reference(quantized, seed: int, spread: int, shape: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    _, spec = quantized
    z, anchor_hat = _random_inputs(spec, seed, spread, shape)
    _assert_same(_gemm(spec, z, anchor_hat), ref.stage_outputs(spec, z, anchor_hat))


def test_saturating_inputs_equal_the_int64_reference(quantized) -> None:  # type: ignore[no-untyped-def]
    """Inputs at and far beyond the clamp limits: every layer's accumulator at its extremes."""
    _, spec = quantized
    z, anchor_hat = _random_inputs(spec, 3, 3, (3, 4))
    z[0, :, 0, :] = 2**31 - 1
    z[0, :, 1, :] = -(2**31)
    z[0, ::2, 2, :2] = 2**15
    anchor_hat[0, :, 0, :] = 1e9
    anchor_hat[0, :, 1, :] = -1e9
    anchor_hat[0, 1::2, 2:4, :] = -3e4
    want = ref.stage_outputs(spec, z, anchor_hat)
    _assert_same(_gemm(spec, z, anchor_hat), want)
    # the saturated hyper drives the parameter passes to their own limits as well
    assert np.abs(want["hyper"]).max() >= min(layer.bound for layer in spec.hyper if layer.shift is not None)


def test_encoder_latents_equal_the_int64_reference(quantized) -> None:  # type: ignore[no-untyped-def]
    """Real inputs: the z symbols and decoded anchors of an encode of a photo-like image."""
    from ckbd.export.torch_backend import open_reference
    from ckbd.runtime.codec import Encoder

    model, spec = quantized
    with open_reference(Encoder, model, integer_params=spec) as encoder:
        latents = encoder.encode_detailed(rgb_array(192, 256, seed=5), estimate=False).latents
    want = ref.stage_outputs(spec, latents.z_symbols, latents.anchor_hat)
    _assert_same(_gemm(spec, latents.z_symbols, latents.anchor_hat), want)
    np.testing.assert_array_equal(latents.anchor_symbols.shape, want["anchor_indexes"].shape)


def test_the_gemm_form_calls_no_convolution_kernel(quantized, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, spec = quantized

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a convolution kernel was called")

    modules = gemm_stage_modules(spec)
    for name in ("conv2d", "conv_transpose2d"):
        monkeypatch.setattr(torch.nn.functional, name, refuse)
        monkeypatch.setattr(torch, name, refuse)
    z, anchor_hat = _random_inputs(spec, 4, 3, (2, 2))
    with torch.inference_mode():
        hyper = modules["hyper_synthesis"](torch.from_numpy(z))
        modules["nonanchor_params"](hyper, torch.from_numpy(anchor_hat))
    np.testing.assert_array_equal(hyper.numpy(), ref.hyper_synthesis(spec, z))


@pytest.mark.parametrize("out_channels", [3, 24])  # sub-pixel form below 16 channels, phase convs above
def test_transposed_and_strided_convolutions_equal_their_integer_definition(out_channels: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-255, 256, (1, 8, 5, 7))
    deconv = torch.nn.ConvTranspose2d(8, out_channels, 5, stride=2, padding=2, output_padding=1).double()
    conv = torch.nn.Conv2d(8, out_channels, 5, stride=2, padding=2).double()
    for layer in (deconv, conv):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(rng.integers(-50, 51, layer.weight.shape)))
            layer.bias.copy_(torch.from_numpy(rng.integers(-999, 1000, layer.bias.shape)))
    w, b = (deconv.weight.detach().numpy().astype(np.int64), deconv.bias.detach().numpy().astype(np.int64))
    cases = [(deconv, ref.deconv2d(x, w, b, 2, 2)),
             (conv, ref.conv2d(x, conv.weight.detach().numpy().astype(np.int64),
                               conv.bias.detach().numpy().astype(np.int64), 2, 2))]
    for layer, want in cases:
        got = gemm_form(layer.float())(torch.from_numpy(x).float())
        np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))


def test_tall_outputs_are_computed_in_bands_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from ckbd.export import gemm_stages

    rng = np.random.default_rng(1)
    conv = GemmConv(torch.from_numpy(rng.integers(-9, 10, (6, 4, 3, 3))).float(), torch.arange(6.0), 2, (1, 1, 1, 1))
    x = torch.from_numpy(rng.integers(-99, 100, (1, 4, 23, 9))).float()
    whole = conv(x)
    monkeypatch.setattr(gemm_stages, "BAND_BYTES", 4 * 36 * 5 * 3)  # 3 output rows a band
    assert gemm_stages.BAND_BYTES < BAND_BYTES
    np.testing.assert_array_equal(conv(x).numpy(), whole.numpy())
    assert whole.shape == (1, 6, 12, 5)


def test_exact_float32_is_scoped_reentrant_and_restores_on_error() -> None:
    def state() -> tuple[bool, bool, str]:
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.get_float32_matmul_precision())

    before = state()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(RuntimeError, match="inside"):
            with exact_float32():
                assert state() == (False, False, "highest")
                with exact_float32():
                    assert state() == (False, False, "highest")
                assert state() == (False, False, "highest")  # the outer block still holds
                raise RuntimeError("inside")
        assert state() == (True, True, "medium")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_exact_float32_restores_settings_made_through_the_per_backend_names() -> None:
    matmul = torch.backends.mkldnn.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no per-backend precision settings")
    before = torch.get_float32_matmul_precision()
    try:
        matmul.fp32_precision = "bf16"  # now the legacy getters refuse to answer
        with exact_float32():
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "bf16"
    finally:
        torch.set_float32_matmul_precision(before)  # the legacy setter makes the legacy getters work again
        torch.get_float32_matmul_precision()
