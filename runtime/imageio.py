"""Reading and writing images as uint8 H x W x 3 arrays (Pillow only).

Grayscale, palette, alpha and 16-bit inputs are converted to 8-bit RGB with a notice on stderr,
because the codecs are trained on RGB; anything Pillow cannot open is an :class:`ImageError`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ckbd.errors import ImageError
from ckbd.runtime.atomic import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
#: Refuse images larger than this before decoding them (Pillow's bomb check is a warning only).
MAX_IMAGE_PIXELS = 2**26


def _notice(path: Path, message: str, quiet: bool) -> None:
    if not quiet:
        print(f"notice: {path}: {message}", file=sys.stderr)


def _to_rgb8(img: Image.Image, path: Path, quiet: bool) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        _notice(path, "16-bit image converted to 8 bits", quiet)
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        _notice(path, f"alpha channel dropped ({img.mode})", quiet)
    else:
        _notice(path, f"{img.mode} image converted to RGB", quiet)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: Path, quiet: bool = False) -> np.ndarray:
    """Decode an image file to a contiguous uint8 (H, W, 3) array."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} exceeds the {MAX_IMAGE_PIXELS}-pixel limit")
            img.load()
            return np.ascontiguousarray(_to_rgb8(img, path, quiet))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) array; the format follows the suffix (PNG when there is none)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        try:
            Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt)
        except (KeyError, ValueError) as exc:
            raise ImageError(f"{path}: cannot write this format ({exc})") from None
