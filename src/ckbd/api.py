"""The one-call Python API: ``ckbd.encode``, ``ckbd.decode`` and ``ckbd.info``.

Everything a caller would otherwise assemble from ``ckbd.runtime`` (open a model package, open an
encoder or decoder on a backend, read the image, bound the stream) happens here, once per process:
the first call with a given model, backend and options opens its codec, later calls reuse it. Calls
may come from any thread; each codec runs one call at a time (a call already uses every core), and
different configurations run in parallel. A forked child (a DataLoader worker) opens its own.
:func:`close_all` frees every opened codec.

Errors are :class:`~ckbd.errors.CkbdError` subclasses with a one-line message: an unreadable image
(:class:`~ckbd.errors.ImageError`), a corrupt, truncated or oversized stream
(:class:`~ckbd.errors.BitstreamError`), a stream of another model
(:class:`~ckbd.errors.ModelMismatchError`), a model that cannot be loaded
(:class:`~ckbd.errors.ModelError`), a job over the memory budget
(:class:`~ckbd.errors.MemoryBudgetError`), an allocation that failed
(:class:`~ckbd.errors.ResourceError`), a backend whose package is missing
(:class:`~ckbd.errors.MissingDependencyError`) or an impossible option
(:class:`~ckbd.errors.UsageError`).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Union, cast

from ckbd.errors import CkbdError, ImageError, ResourceError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from ckbd.runtime.bitstream import Header
    from ckbd.runtime.package import ModelPackage

#: What :func:`encode` reads: an image file (path or binary file object), a PIL image, or a uint8 H x W x 3 array.
ImageInput = Union[str, "os.PathLike[str]", IO[bytes], "Image.Image", "np.ndarray"]
#: What :func:`decode` and :func:`info` read: the stream's bytes, a .ckbd path, or a binary file object.
StreamInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]
#: A model: an exported model directory, an opened package, or None for the model that ships with ckbd.
ModelInput = Union[str, "os.PathLike[str]", "ModelPackage", None]


@dataclass
class _Shared:
    """One opened codec and the lock that lets one call at a time use it."""

    codec: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


_codecs: dict[_Config, _Shared] = {}
_codecs_lock = threading.Lock()
#: Codecs a forked child inherited (see :func:`_forget_after_fork`); kept so that they are never finalised.
_inherited: list[dict[_Config, _Shared]] = []


def _forget_after_fork() -> None:
    """A forked child (e.g. a DataLoader worker) opens its own codecs: the parent's ONNX Runtime
    sessions lost their thread pools in the fork, and a lock held by another thread at that moment
    would never be released. They are kept unused rather than closed, since closing them would wait
    on threads the child does not have."""
    global _codecs, _codecs_lock
    _inherited.append(_codecs)
    _codecs, _codecs_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def encode(image: ImageInput, *, model: ModelInput = None, backend: str = "onnxruntime", threads: int = 0,
           precision: str = "fp32", max_memory: int | str | None = None) -> bytes:
    """Compress one image to the bytes of a .ckbd file.

    ``image`` is converted as ``ckbd encode`` converts files (grayscale, palette and alpha to RGB,
    16-bit and float to 8 bits, the EXIF orientation applied), silently. ``model`` is an exported
    model directory (the shipped model when None); ``backend`` onnxruntime, tensorrt or torch;
    ``threads`` the CPU threads (0: all cores); ``max_memory`` the peak-memory budget in bytes or
    as ``"4G"`` (default: 1.5 GiB, at most half of what the machine has free). A path's size is checked against the
    budget before its pixels are decoded. Raises :class:`~ckbd.errors.CkbdError` subclasses (see
    the module docstring).
    """
    from ckbd.runtime.codec import Encoder
    from ckbd.runtime.memory import plan_analysis

    config = _Config.of(Encoder, model, backend, threads, precision, max_memory)
    with _guard():
        shared = _shared(config)
        m, budget = shared.codec.manifest, shared.codec.model.memory

        def fits(height: int, width: int) -> None:
            plan_analysis(m.arch, m.N, m.M, height, width, budget)

        pixels = _pixels(image, fits)
        return _call(config, shared, lambda encoder: encoder.encode(pixels))  # type: ignore[no-any-return]


def decode(data: StreamInput, *, model: ModelInput = None, backend: str = "onnxruntime", threads: int = 0,
           precision: str = "fp32", max_memory: int | str | None = None,
           max_pixels: int | None = None) -> np.ndarray:
    """Decompress a .ckbd stream to a uint8 (H, W, 3) RGB array, exactly as ``ckbd decode`` does.

    ``data`` is the stream's bytes, a .ckbd path, or a binary file read from its position. The
    header is validated against the model and the memory budget before anything image-sized is
    allocated, and a file is read no further than the size its header announces. ``max_pixels``
    raises the format's guard on the padded size (2**28 pixels) for files you trust; the other
    options are :func:`encode`'s. Raises :class:`~ckbd.errors.CkbdError` subclasses (see the module
    docstring).
    """
    from ckbd.runtime.codec import Decoder
    from ckbd.runtime.stream_io import read_stream

    config = _Config.of(Decoder, model, backend, threads, precision, max_memory, max_pixels)
    with _guard():
        shared = _shared(config)
        decoder = shared.codec
        stream = read_stream(_stream_source(data), decoder.max_pixels, check=decoder.check_header)
        return _call(config, shared, lambda codec: codec.decode(stream))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class StreamInfo:
    """What a .ckbd stream holds, read from its header alone (nothing is decoded).

    ``header`` has every field: the model that wrote it (``arch``, ``N``, ``M``, ``fingerprint_hex``,
    ``entropy_params``), the latent shapes and the payload lengths; ``ckbd info`` prints the same.
    """

    header: Header
    size: int  # bytes in the whole stream

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole stream (header included), as every ckbd report counts them."""
        from ckbd.runtime.rate import bits_per_pixel

        return bits_per_pixel(self.size, self.header.height, self.header.width)


def info(data: StreamInput) -> StreamInfo:
    """The header of a .ckbd stream and its size, checked but not decoded (payloads are counted, not
    kept). Raises :class:`~ckbd.errors.BitstreamError` for anything that is not a valid, complete
    stream, :class:`~ckbd.errors.CkbdError` for a file that cannot be read."""
    from ckbd.runtime.stream_io import read_stream

    stream = read_stream(_stream_source(data), max_pixels=None, payloads=False)
    return StreamInfo(stream.header, stream.size)


def close_all() -> None:
    """Close every codec this module opened (waiting for calls in flight); the next call opens anew."""
    with _codecs_lock:
        shared = list(_codecs.values())
        _codecs.clear()
    for entry in shared:
        with entry.lock:
            entry.closed = True
            entry.codec.close()


# -- internals ------------------------------------------------------------------------------


@contextmanager
def _guard() -> Iterator[None]:
    """A failed allocation outside the backends (numpy, Pillow) becomes ckbd's one-line error."""
    try:
        yield
    except MemoryError:
        raise ResourceError("out of memory: an allocation failed") from None


@dataclass(frozen=True)
class _Config:
    """What a shared codec is opened with; equal configurations share one codec."""

    kind: type  # Encoder or Decoder
    model: Any  # None, a resolved directory, or a package object (compared by identity)
    backend: str
    threads: int
    precision: str
    max_memory: int | str | None
    max_pixels: int | None = None

    @classmethod
    def of(cls, codec: type, model: ModelInput, backend: str, threads: int, precision: str,
           max_memory: int | str | None, max_pixels: int | None = None) -> _Config:
        key = str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else model
        return cls(codec, key, backend, threads, precision, max_memory, max_pixels)

    def open(self) -> Any:
        from ckbd.runtime.memory import MemoryBudget, parse_memory

        budget = MemoryBudget(parse_memory(str(self.max_memory))) if self.max_memory is not None else None
        model = Path(self.model) if isinstance(self.model, str) else self.model
        codec = self.kind.open(model, self.backend, threads=self.threads,  # type: ignore[attr-defined]
                              precision=self.precision, memory=budget)
        if self.max_pixels is not None:
            codec.max_pixels = self.max_pixels
        return codec


def _shared(config: _Config) -> _Shared:
    """The process's codec for ``config``, opened on first use."""
    with _codecs_lock:  # held while opening: two threads asking at once open one codec
        entry = _codecs.get(config)
        if entry is None:
            entry = _codecs[config] = _Shared(config.open())
        return entry


def _call(config: _Config, shared: _Shared, work: Callable[[Any], Any]) -> Any:
    """``work(codec)`` under the codec's lock; a codec that :func:`close_all` closed meanwhile is opened anew."""
    while True:
        with shared.lock:
            if not shared.closed:
                return work(shared.codec)
        shared = _shared(config)


def _pixels(image: ImageInput, fits: Callable[[int, int], None]) -> np.ndarray:
    """A uint8 (H, W, 3) array of ``image``, by the rules of ``ckbd.runtime.imageio``."""
    import numpy as np
    from PIL import Image

    from ckbd.runtime import imageio

    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image) if image.dtype == np.uint8 else image  # the encoder names what is wrong
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<image>"
        imageio.check_pixels(image.width, image.height, name)
        fits(image.height, image.width)
        try:
            return imageio.rgb8_of(image, name, quiet=True)
        except (OSError, ValueError) as exc:  # a lazily opened file whose pixels cannot be read
            raise ImageError(f"{name}: cannot read image ({exc})") from None
    if isinstance(image, (str, os.PathLike)):
        return imageio.read_image(Path(image), quiet=True, check_size=fits)
    if hasattr(image, "read"):
        return imageio.read_image(image, quiet=True, check_size=fits)
    raise ImageError(f"cannot encode a {type(image).__name__}: give a path, a binary file, a PIL image "
                     "or a uint8 H x W x 3 array")


def _stream_source(data: StreamInput) -> Path | BinaryIO:
    """A path or a binary file object for ``read_stream`` (bytes are wrapped, not copied twice)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    if isinstance(data, (str, os.PathLike)):
        return Path(data)
    if hasattr(data, "read"):
        return cast(BinaryIO, data)
    raise CkbdError(f"cannot decode a {type(data).__name__}: give bytes, a .ckbd path or a binary file")
