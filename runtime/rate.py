"""The one definition of the rate every report prints: bits per pixel of the actual bytes."""

from __future__ import annotations


def bits_per_pixel(n_bytes: float, height: int, width: int) -> float:
    """``8 * bytes / (height * width)`` of the original image (not the padded one), so files of
    different codecs compare by what a user stores; 0 for an empty image instead of a crash."""
    pixels = height * width
    return 8.0 * n_bytes / pixels if pixels else 0.0
