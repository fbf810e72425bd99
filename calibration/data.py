"""Calibration inputs: what a quantised stage will see at run time, computed from real images.

Activation ranges are only as good as the data they are measured on, so each stage is fed exactly
what the production pipeline feeds it:

* ``latent_synthesis`` gets the *decoded* latent halves (``symbol + mean``) that the fp32 encoder
  produces, i.e. bit for bit what the decoder hands to synthesis;
* ``analysis`` gets the edge-padded float image tensor that the encoder builds.

Feeds are produced lazily, one image at a time, because the calibrators keep every intermediate
activation of the images in flight in memory (an estimated few hundred MB per Kodak image for an
N=192 model); with one image per batch memory stays flat whatever ``count`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError
from ckbd.runtime.imageio import read_image
from ckbd.runtime.stages import ANALYSIS, LATENT_SYNTHESIS

#: Maps one uint8 (H, W, 3) image to the feed dict of one stage.
FeedFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def analysis_feeds() -> FeedFn:
    """Feeds for ``analysis``: the padded NCHW float image, built by the encoder's own function."""
    from ckbd.runtime.codec import to_network_input  # the one padding rule; duplicating it risks drift

    def feed(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": to_network_input(image)}

    return feed


def latent_feeds(model_dir: Path, threads: int = 0) -> FeedFn:
    """Feeds for ``latent_synthesis``: the latent halves the fp32 encoder codes for an image.

    The full encoder (entropy coding included) runs so that the halves are ``symbol + mean``
    exactly as the decoder rebuilds them, rather than the un-rounded analysis output.
    """
    from ckbd.runtime.codec import Encoder

    encoder = Encoder.open(model_dir, threads=threads)  # fp32: calibrate against the float pipeline

    def feed(image: np.ndarray) -> dict[str, np.ndarray]:
        latents = encoder.encode_detailed(image, estimate=False).latents
        return {"anchor_hat": np.ascontiguousarray(latents.anchor_hat, dtype=np.float32),
                "nonanchor_hat": np.ascontiguousarray(latents.nonanchor_hat, dtype=np.float32)}

    return feed


def stage_feeds(stage: str, model_dir: Path, threads: int = 0) -> FeedFn:
    """The feed function for a quantisable stage."""
    if stage == LATENT_SYNTHESIS:
        return latent_feeds(model_dir, threads)
    if stage == ANALYSIS:
        return analysis_feeds()
    raise CkbdError(f"no calibration data is defined for stage '{stage}'")


class ImageFeedReader:
    """An ONNX Runtime ``CalibrationDataReader`` over image files, one feed per image.

    It follows ORT's reader protocol (``get_next`` returning ``None`` at the end, ``__len__`` and
    ``set_range`` for strided calibration) without subclassing it, so that importing this module
    does not import ``onnxruntime.quantization`` (and with it ``onnx``). A tqdm bar advances per
    image; it is closed when the last image has been served.
    """

    def __init__(self, images: Sequence[Path], feeds: FeedFn, label: str = "calibrating",
                 progress: bool = True) -> None:
        if not images:
            raise CkbdError("no calibration images")
        self.images = list(images)
        self.feeds = feeds
        self.label = label
        self.progress = progress
        self._next = 0
        self._end = len(self.images)
        self._bar: Any = None

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve images ``[start_index, end_index)`` next (ORT's strided collection calls this)."""
        self._next = max(0, start_index)
        self._end = min(len(self.images), end_index)

    def rewind(self) -> None:
        """Start over from the first image (a new pass, e.g. another calibration run)."""
        self.close()
        self.set_range(0, len(self.images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            if self._end >= len(self.images):
                self.close()
            return None
        path = self.images[self._next]
        self._next += 1
        feed = self.feeds(read_image(path, quiet=True))
        self._progress_bar().update(1)
        return feed

    def __iter__(self) -> ImageFeedReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def _progress_bar(self) -> Any:
        if self._bar is None:
            from ckbd.progress import progress

            self._bar = progress(total=len(self.images), desc=self.label, unit="img", enabled=self.progress)
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
