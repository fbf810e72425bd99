"""Image sizes as "HxW" text (height first, as in ``512x768``): the one parser every command uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ckbd.errors import UsageError
from ckbd.runtime.stages import PAD_MULTIPLE


@dataclass(frozen=True, order=True)
class ImageSize:
    """An image size in pixels, height first (as in ``"512x768"``: 512 rows, 768 columns)."""

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    def padded(self, multiple: int = PAD_MULTIPLE) -> ImageSize:
        """Round both sides up to the codec's padding multiple, as the codec does to images."""
        return ImageSize(
            -(-self.height // multiple) * multiple, -(-self.width // multiple) * multiple
        )


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> ImageSize:
    """Parse ``"HxW"`` (e.g. ``"512x768"``)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"image size '{text}' is not HxW, e.g. 512x768")
    size = ImageSize(int(match.group(1)), int(match.group(2)))
    if size.height <= 0 or size.width <= 0:
        raise UsageError(f"image size '{text}' must be positive")
    return size
