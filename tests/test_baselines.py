"""Baseline reference codecs: exact round trips and a causal serial decode (tiny models, 64x64)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rgb_array, tiny_model

torch = pytest.importorskip("torch")

from ckbd.baselines import (  # noqa: E402
    MEAN_DECODE_STAGES,
    SERIAL_DECODE_STAGES,
    SERIAL_ENCODE_STAGES,
    BaselineCodec,
    baseline_codec,
)
from ckbd.errors import BitstreamError, ModelError  # noqa: E402
from ckbd.runtime.profiling import StageTimer  # noqa: E402

LATENTS = ("z_symbols", "y_symbols", "y_hat", "means", "indexes")


@pytest.fixture(scope="module")
def serial() -> BaselineCodec:
    return baseline_codec(tiny_model("mbt2018", seed=3))


@pytest.fixture(scope="module")
def mean() -> BaselineCodec:
    return baseline_codec(tiny_model("mbt2018-mean", seed=4))


def _round_trip(codec: BaselineCodec, image: np.ndarray) -> tuple:  # type: ignore[type-arg]
    enc_timer, dec_timer = StageTimer(), StageTimer()
    enc = codec.encode_detailed(image, enc_timer)
    dec = codec.decode_detailed(enc.data, dec_timer)
    for name in LATENTS:
        np.testing.assert_array_equal(getattr(enc.latents, name), getattr(dec.latents, name), err_msg=name)
    assert dec.image.shape == image.shape and dec.image.dtype == np.uint8
    return enc, dec, enc_timer.times_ms, dec_timer.times_ms


def test_serial_round_trip_is_exact_and_timed(serial: BaselineCodec) -> None:
    image = rgb_array(64, 64, seed=5)
    enc, dec, enc_ms, dec_ms = _round_trip(serial, image)
    assert set(SERIAL_DECODE_STAGES) <= set(dec_ms) and set(SERIAL_ENCODE_STAGES) <= set(enc_ms)
    assert dec.latents.y_symbols.shape == (1, serial.M, 4, 4)
    # the encoder's own reconstruction is what the decoder produces
    np.testing.assert_array_equal(serial.decode(enc.data), dec.image)


def test_serial_decode_is_causal(serial: BaselineCodec) -> None:
    """The serial decode used, at every position, exactly the parameters the model computes in one
    pass over the *finished* latent: the 5x5 type-A mask only ever looked at decoded positions."""
    image = rgb_array(64, 64, seed=6)
    _, dec, _, _ = _round_trip(serial, image)
    model = serial.model
    with torch.no_grad():
        medians = model.entropy_bottleneck.medians().reshape(1, -1, 1, 1)
        hyper = model.h_s(torch.from_numpy(dec.latents.z_symbols).float() + medians)
        scales, means = model.y_params(torch.from_numpy(dec.latents.y_hat), hyper)
    np.testing.assert_allclose(means.numpy(), dec.latents.means, atol=1e-5)
    np.testing.assert_allclose(dec.latents.y_hat, dec.latents.y_symbols + dec.latents.means, atol=1e-6)
    from ckbd.runtime.entropy_tables import scale_to_index

    agree = scale_to_index(scales.numpy(), serial.scale_table) == dec.latents.indexes
    assert agree.mean() > 0.99  # a scale exactly on a table threshold may flip by float error


def test_mean_round_trip_is_exact(mean: BaselineCodec) -> None:
    for size in [(64, 64), (67, 131)]:
        _, dec, _, dec_ms = _round_trip(mean, rgb_array(*size, seed=7))
        assert set(MEAN_DECODE_STAGES) <= set(dec_ms)
        assert dec.image.shape[:2] == size


def test_streams_are_checked(serial: BaselineCodec, mean: BaselineCodec) -> None:
    data = serial.encode(rgb_array(64, 64, seed=8))
    with pytest.raises(BitstreamError):
        mean.decode(data)  # another architecture
    with pytest.raises(BitstreamError):
        serial.decode(data[:-4])  # payload sizes no longer add up
    with pytest.raises(BitstreamError):
        serial.decode(b"XXXX" + data[4:])


def test_only_baseline_models() -> None:
    with pytest.raises(ModelError):
        baseline_codec(tiny_model("mbt2018-ckbd"))
