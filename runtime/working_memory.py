"""Whether a run keeps its working memory for the next image, or hands it back when it ends.

Kept memory is faster: ONNX Runtime's CPU arena reuses the buffers of the previous run, where
fresh buffers cost a page fault and a zeroed page each (measured on the paper-size model, Kodak
768x512, 2 threads: latent synthesis 295 -> 250 ms). Handed-back memory is what the memory
budget of :mod:`ckbd.runtime.memory` was measured with: a stage's peak is its own, never the sum
of every stage's high-water mark, and an arena grown for an 8K image would stay at that size.

So a run keeps its memory only when its image is small (at most :data:`RETAIN_MAX_PIXELS`, a
padded 1080p frame) and its memory plan has room for it (``Plan.retains``: a whole run whose kept
buffers leave room for the job's other phase; never a tile); backends that have no such choice
(TensorRT's buffers are sized per engine) ignore it. Each thread has its own setting
(a context variable), so ``--jobs`` workers sharing a backend do not see each other's tiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from ckbd.runtime.stages import padded_image_size

#: Largest image (padded pixels) whose runs keep their working memory: 1920x1088 fits. Memory kept
#: between images is about one run's working set of such an image per stage (ONNX Runtime CPU:
#: latent synthesis of N=192 at 768x512 peaks at 514 MB resident kept, 460 MB handed back).
RETAIN_MAX_PIXELS = 1 << 21

_RELEASE = ContextVar("ckbd_release_working_memory", default=False)


@contextmanager
def releasing_working_memory() -> Iterator[None]:
    """Runs inside hand their working memory back (the tiles of a budgeted job)."""
    token = _RELEASE.set(True)
    try:
        yield
    finally:
        _RELEASE.reset(token)


def image_pixels(stage: str, shapes: Mapping[str, Sequence[int]]) -> int | None:
    """Padded image pixels of a run of ``stage`` from its input shapes (None: cannot tell)."""
    size = padded_image_size(stage, shapes)
    return None if size is None else size[0] * size[1]


def retains_working_memory(stage: str, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether this run may keep its working memory for the next image (see the module docstring)."""
    if _RELEASE.get():
        return False
    pixels = image_pixels(stage, shapes)
    return pixels is not None and pixels <= RETAIN_MAX_PIXELS
