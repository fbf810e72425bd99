"""Reading and writing images as uint8 H x W x 3 arrays (Pillow only).

The codecs are trained on 8-bit RGB, so every input becomes that, and whatever changes on the
way is said on stderr: grayscale, palette and alpha conversions, 16-bit and float images scaled to
8 bits (float images are taken as [0, 1]), an EXIF orientation applied, and the frames after the
first of an animation or multi-page file left out. Anything Pillow cannot open is an
:class:`ImageError`. Writing refuses formats that would silently change the decoded pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ckbd.errors import CkbdError, ImageError
from ckbd.progress import notice
from ckbd.runtime.atomic import atomic_write_bytes
from ckbd.runtime.bitstream import DEFAULT_MAX_PIXELS, padded_size

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def find_images(folder: Path, count: int | None = None, what: str = "image",
                suffixes: frozenset[str] | set[str] = frozenset(IMAGE_SUFFIXES)) -> list[Path]:
    """The first ``count`` images under ``folder`` and its subfolders, sorted so that runs are reproducible.

    The one rule for "the images in a folder", used by every command that takes one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CkbdError(f"{what} folder {folder} does not exist")
    if count is not None and count < 1:
        raise CkbdError(f"--count must be at least 1, got {count}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise CkbdError(f"no images ({', '.join(sorted(suffixes))}) under {folder}")
    return files[:count] if count is not None else files


#: Refuse images whose padded size exceeds this before decoding them (Pillow's bomb check is a warning only);
#: the codec's own limit, so that every image the encoder accepts can be read.
MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
# Pillow's own bomb guard warns above 89 M pixels and refuses above twice that, below what ckbd accepts:
# raise it to ckbd's limit, which check_pixels enforces on the header (and the memory budget after it).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_IMAGE_PIXELS)
#: Largest image file read from stdin (a 2**26-pixel float RGB TIFF is 768 MiB).
MAX_STDIN_BYTES = 1 << 30
_ORIENTATION_TAG = 0x0112

#: Formats that store 8-bit RGB exactly (WebP in its lossless mode), with their save options.
LOSSLESS_FORMATS: dict[str, dict[str, Any]] = {
    "PNG": {}, "BMP": {}, "PPM": {}, "TIFF": {}, "TGA": {}, "WEBP": {"lossless": True, "quality": 100},
}
#: Why the others are refused unless asked for by name.
_LOSSY_REASONS = {
    "JPEG": "re-compresses the decoded image lossily",
    "JPEG2000": "re-compresses the decoded image lossily",
    "GIF": "reduces it to 256 colours",
    "ICO": "shrinks it to at most 256x256 pixels",
}


def _notice(name: str, message: str, quiet: bool) -> None:
    if not quiet:
        notice(f"{name}: {message}")  # above any progress bar; silent with --quiet


def _to_rgb8(img: Image.Image, name: str, quiet: bool) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        _notice(name, "16-bit image scaled to 8 bits", quiet)
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        clipped = "" if 0.0 <= low and high <= 1.0 else f"; values outside it (found {low:g}..{high:g}) clipped"
        _notice(name, f"float image read as [0, 1] and scaled to 8 bits{clipped}", quiet)
        scaled = np.rint(np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0).astype(np.uint8)
        img = Image.fromarray(scaled, mode="L")
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        _notice(name, f"alpha channel dropped ({img.mode})", quiet)
    else:
        _notice(name, f"{img.mode} image converted to RGB", quiet)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _upright(img: Image.Image, name: str, quiet: bool) -> Image.Image:
    """Apply the EXIF orientation, as viewers do, so the file encodes the way it is seen."""
    orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    if orientation in (None, 1):
        return img
    turned = ImageOps.exif_transpose(img)
    _notice(name, f"EXIF orientation {orientation} applied", quiet)
    return turned


def check_pixels(width: int, height: int, name: str) -> None:
    """The limit counts padded pixels: that is what the analysis transform allocates for."""
    ph, pw = padded_size(height, width)
    if ph * pw > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: {width}x{height} ({pw}x{ph} padded) exceeds the {MAX_IMAGE_PIXELS}-pixel limit")


def read_image(source: Path | IO[bytes], quiet: bool = False, name: str | None = None,
               check_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decode an image file (a path or a binary file object) to a contiguous uint8 (H, W, 3) array.

    ``check_size(height, width)`` runs on the header's size before any pixel is decoded: an encoder's
    memory budget refuses a hostile or oversized image there, not after Pillow has allocated it.
    """
    if name is None:
        name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<stream>")
    try:
        with Image.open(Path(source) if isinstance(source, str) else source) as img:
            check_pixels(img.width, img.height, name)
            if check_size is not None:
                check_size(img.height, img.width)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                _notice(name, f"{frames} frames or pages; only the first is encoded", quiet)
            img.load()
            return rgb8_of(img, name, quiet)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: cannot read image ({exc})") from None


def rgb8_of(img: Image.Image, name: str, quiet: bool = False) -> np.ndarray:
    """A loaded Pillow image as the codec's uint8 H x W x 3 array: EXIF orientation applied, then converted
    to 8-bit RGB, each change said on stderr unless ``quiet`` (the rules of :func:`read_image`)."""
    return np.ascontiguousarray(_to_rgb8(_upright(img, name, quiet), name, quiet))


def resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (uint8 H x W x 3) resized bicubic to ``height`` x ``width`` (the same array when it already
    is): how benchmarks make 1080p to 8K inputs from the Kodak photos."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def read_image_bytes(data: bytes, name: str, quiet: bool = False,
                     check_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    return read_image(io.BytesIO(data), quiet=quiet, name=name, check_size=check_size)


@dataclass(frozen=True)
class OutputFormat:
    """A Pillow format name and its save options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def output_format(path: Path | None, explicit: str | None = None) -> OutputFormat:
    """The format to write: ``explicit`` if given, else the suffix's, PNG without one.

    A format that would change the decoded pixels (JPEG, GIF, ICO, ...) must be named explicitly.
    """
    if explicit:
        fmt = explicit.upper().lstrip(".")
        fmt = Image.registered_extensions().get(f".{fmt.lower()}", fmt)
        if fmt not in Image.SAVE:
            raise ImageError(f"unknown image format '{explicit}'; e.g. png, tiff, webp, bmp, jpeg")
        return OutputFormat(fmt, LOSSLESS_FORMATS.get(fmt, {}))
    suffix = Path(path).suffix.lower() if path is not None else ""
    fmt = Image.registered_extensions().get(suffix, "PNG")
    if fmt not in LOSSLESS_FORMATS:
        reason = _LOSSY_REASONS.get(fmt, "may not store 8-bit RGB exactly")
        raise ImageError(
            f"writing {path} as {fmt} {reason}; write .png, .webp (lossless), .tiff, .bmp or .ppm, "
            f"or pass --format {fmt.lower()} to accept that"
        )
    return OutputFormat(fmt, LOSSLESS_FORMATS[fmt])


def image_bytes(image: np.ndarray, fmt: OutputFormat) -> bytes:
    """Encode a uint8 (H, W, 3) array in memory (so it can go to a file or to stdout alike)."""
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format=fmt.name, **fmt.options)
    except (KeyError, ValueError, OSError) as exc:
        raise ImageError(f"cannot write {fmt.name} ({exc})") from None
    return buffer.getvalue()


def write_image(path: Path, image: np.ndarray, fmt: OutputFormat | None = None, *, replace: bool = True) -> None:
    """Write a uint8 (H, W, 3) array atomically; the format follows the suffix unless given."""
    path = Path(path)
    atomic_write_bytes(path, image_bytes(image, fmt or output_format(path)), replace=replace)
