"""Image-size profiles of TensorRT engines and the per-stage input shapes they imply.

An engine accepts a range of image sizes (H x W, padded to 64); every stage graph sees them through
the symbolic shapes of :mod:`ckbd.runtime.stages`. Pure Python: usable without TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckbd.errors import CkbdError
from ckbd.runtime.image_size import ImageSize, parse_size
from ckbd.runtime.stages import stage_shapes


@dataclass(frozen=True)
class SizeProfile:
    """The image sizes an engine accepts (min..max) and is tuned for (opt), padded to 64."""

    min: ImageSize
    opt: ImageSize
    max: ImageSize

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            object.__setattr__(self, name, getattr(self, name).padded())
        for dim in ("height", "width"):
            low, mid, high = (getattr(s, dim) for s in (self.min, self.opt, self.max))
            if not low <= mid <= high:
                raise CkbdError(
                    f"size profile needs min <= opt <= max in {dim}: "
                    f"got {self.min}, {self.opt}, {self.max}"
                )

    @classmethod
    def parse(cls, min_size: str, opt_size: str, max_size: str) -> SizeProfile:
        return cls(parse_size(min_size), parse_size(opt_size), parse_size(max_size))

    def to_dict(self) -> dict[str, list[int]]:
        return {
            key: [size.height, size.width]
            for key, size in (("min", self.min), ("opt", self.opt), ("max", self.max))
        }


DEFAULT_PROFILE = SizeProfile(ImageSize(64, 64), ImageSize(512, 768), ImageSize(2048, 2048))

def stage_input_shapes(stage: str, size: ImageSize, M: int, N: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of ``stage`` for an image of ``size`` (padded to 64)."""
    padded = size.padded()
    return stage_shapes(stage, N, M, padded.height, padded.width)


ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def stage_profile_shapes(stage: str, profile: SizeProfile, M: int, N: int) -> dict[str, ShapeRange]:
    """(min, opt, max) input shapes of ``stage`` for an image-size profile."""
    low, mid, high = (
        stage_input_shapes(stage, s, M, N) for s in (profile.min, profile.opt, profile.max)
    )
    return {name: (low[name], mid[name], high[name]) for name in low}

