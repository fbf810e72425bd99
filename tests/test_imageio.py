"""Image input: every Pillow mode becomes 8-bit RGB with a notice; unreadable input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ckbd.errors import ImageError
from ckbd.runtime.imageio import read_image, write_image


def _save(tmp_path: Path, name: str, image: Image.Image) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize(("mode", "notice"), [("L", "converted to RGB"), ("RGBA", "alpha channel dropped"),
                                              ("P", "converted to RGB"), ("LA", "alpha channel dropped")])
def test_modes_are_converted_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str,
                                           notice: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    path = _save(tmp_path, f"x-{mode}.png", rgb.convert(mode))
    image = read_image(path)
    assert image.shape == (9, 7, 3) and image.dtype == np.uint8
    assert notice in capsys.readouterr().err


def test_16_bit_is_scaled_to_8_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wide = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "wide.png", Image.fromarray(wide))
    image = read_image(path)
    assert image[0, :, 0].tolist() == [0, 128, 255]
    assert np.array_equal(image[..., 0], image[..., 2])
    assert "16-bit" in capsys.readouterr().err


def test_rgb_is_read_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    write_image(path, data)
    assert np.array_equal(read_image(path), data)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_unreadable_input_is_an_image_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.png"):
        read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_oversized_image_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckbd.runtime.imageio as imageio

    path = _save(tmp_path, "big.png", Image.new("RGB", (64, 64)))
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(path)
