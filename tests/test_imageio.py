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


def test_float_image_in_unit_range_is_scaled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(tmp_path, "float.tiff", Image.fromarray(values))
    image = read_image(path)
    assert image[0, :, 1].tolist() == [0, 128, 255]
    assert "float image read as [0, 1]" in capsys.readouterr().err


def test_float_image_outside_unit_range_says_it_clipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _save(tmp_path, "float.tiff", Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32)))
    assert read_image(path)[0, :, 0].tolist() == [0, 255]
    assert "clipped" in capsys.readouterr().err


def test_exif_orientation_is_applied_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.zeros((4, 8, 3), np.uint8)
    data[0, 0] = 255  # a white top-left corner marks the orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(data).save(path, exif=exif)
    image = read_image(path)
    assert image.shape == (8, 4, 3)
    assert image[0, -1].tolist() == [255, 255, 255]
    assert "EXIF orientation 6 applied" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "kwargs"), [("anim.gif", {}), ("pages.tiff", {}), ("anim.webp", {"lossless": True})])
def test_multi_frame_input_keeps_the_first_frame_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              name: str, kwargs: dict) -> None:
    frames = [Image.new("RGB", (8, 6), (200 * (i == 0), 40 * i, 0)) for i in range(3)]
    path = tmp_path / name
    frames[0].save(path, save_all=True, append_images=frames[1:], **kwargs)
    image = read_image(path)
    assert image[0, 0, 0] > 150  # the first frame
    assert "3 frames or pages; only the first is encoded" in capsys.readouterr().err


def test_padded_size_counts_for_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckbd.runtime.imageio as imageio

    path = _save(tmp_path, "strip.png", Image.new("RGB", (65, 1)))  # 65 pixels, 128x64 once padded
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 64 * 64)
    with pytest.raises(ImageError, match="padded"):
        read_image(path)


@pytest.mark.parametrize(("suffix", "reason"), [(".jpg", "lossily"), (".gif", "256 colours"), (".ico", "256x256")])
def test_lossy_output_formats_need_to_be_named(suffix: str, reason: str) -> None:
    from ckbd.runtime.imageio import output_format

    with pytest.raises(ImageError, match=reason):
        output_format(Path("x" + suffix))
    assert output_format(Path("x" + suffix), suffix[1:]).name in ("JPEG", "GIF", "ICO")


def test_lossless_output_formats_round_trip(tmp_path: Path) -> None:
    from ckbd.runtime.imageio import output_format

    data = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    for suffix in (".png", ".webp", ".tiff", ".bmp", ".ppm", ""):
        path = tmp_path / f"x{suffix}"
        write_image(path, data)
        assert output_format(path).name in ("PNG", "WEBP", "TIFF", "BMP", "PPM")
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), data), suffix


def test_unreadable_files_on_the_command_line_fail_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ckbd.cli.main import main

    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))
    good = _save(tmp_path, "good.png", Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3),
                                                                                         dtype=np.uint8)))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = main(["--quiet", "encode", str(tmp_path / "missing.png"), str(tmp_path / "bad.png"), str(good),
                 "-o", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "missing.png: no such file" in err and "bad.png: not an image" in err
    assert (tmp_path / "out" / "good.ckbd").exists()


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a size and holds no pixel data: only its header can be read."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_size_check_runs_on_the_header_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def refuse(height: int, width: int) -> None:
        seen.append((height, width))
        raise ImageError("over budget")

    with pytest.raises(ImageError, match="over budget"):
        read_image(_header_only_png(tmp_path / "big.png", 12000, 9000), check_size=refuse)
    assert seen == [(9000, 12000)]


def test_encode_refuses_an_image_over_the_memory_budget_from_its_header(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from ckbd.cli.main import main

    src = _header_only_png(tmp_path / "big.png", 12000, 9000)
    code = main(["encode", str(src), "-o", str(tmp_path / "big.ckbd"), "--max-memory", "200M"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "memory budget" in lines[0], lines
    assert not (tmp_path / "big.ckbd").exists()
