"""A Pillow plugin for .ckbd files: ``import ckbd.pillow`` and Pillow reads and writes them.

``Image.open`` reads and checks the header alone (size, mode ``RGB``, format ``CKBD``, and in
``info`` the model and the rate), so a folder of .ckbd files can be listed, sized and filtered
without decoding; ``load()`` (or anything that needs pixels: ``convert``, ``np.asarray``) decodes
with :func:`ckbd.decode`, the pixels ``ckbd decode`` writes. ``save("x.ckbd")`` or
``save(fp, format="CKBD")`` encodes with :func:`ckbd.encode`; its parameters (``model``,
``backend``, ``threads``, ``precision``, ``max_memory``) override those given to :func:`register`,
which also apply to decoding.

A file that is not a valid stream fails as Pillow's own formats fail, with ckbd's reason in the
message: a bad header is an :class:`~PIL.UnidentifiedImageError` from ``Image.open``; corrupt
payloads, a stream of another model, or a job over the memory budget an :class:`OSError` from
``load()``, raised before the image memory is allocated.
"""

from __future__ import annotations

import os
from typing import IO, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from ckbd.errors import CkbdError
from ckbd.runtime import bitstream as bs
from ckbd.runtime.rate import bits_per_pixel

FORMAT = "CKBD"
EXTENSION = ".ckbd"
MIME = "image/x-ckbd"
#: Save parameters that go to the codec (any other is ignored, as Pillow's plugins do).
CODEC_OPTIONS = ("model", "backend", "threads", "precision", "max_memory")

#: Codec options for decoding, and defaults for saving; set by :func:`register`.
_options: dict[str, Any] = {}


def _accept(prefix: bytes) -> bool:
    return prefix[: len(bs.MAGIC)] == bs.MAGIC


class CkbdImageFile(ImageFile.ImageFile):
    """A .ckbd file: the header read at open, the pixels decoded on ``load()``."""

    format = FORMAT
    format_description = "ckbd learned image codec"

    def _open(self) -> None:
        assert self.fp is not None
        try:
            header = bs.peek_header(self.fp.read(bs.HEADER_SIZE))
        except CkbdError as exc:
            raise UnidentifiedImageError(f"cannot identify image file {self._name()!r}: {exc}") from None
        self._mode = "RGB"
        self._size = (header.width, header.height)
        self.info.update({
            "model": header.arch, "model_fingerprint": header.fingerprint_hex, "N": header.N, "M": header.M,
            "entropy_params": header.entropy_params,
            "bpp": bits_per_pixel(header.total_size, header.height, header.width),
        })
        # Decoded by load() below; a tile makes Pillow treat the image as not loaded yet.
        self.tile = [ImageFile._Tile(FORMAT, (0, 0, *self.size), 0, None)]

    def load(self) -> Any:
        if self.tile:  # not decoded yet
            self._decode()
        return super().load()

    def _decode(self) -> None:
        """Decode the whole stream (header checked against the model and the memory budget first)."""
        from ckbd.api import decode

        assert self.fp is not None
        self.fp.seek(0)
        try:
            pixels = decode(self.fp, **_options)
        except CkbdError as exc:
            raise OSError(f"cannot decode {self._name()}: {exc}") from None
        if pixels.shape[:2] != (self.height, self.width):  # the file changed since it was opened
            raise OSError(f"cannot decode {self._name()}: the header changed since the file was opened")
        self.load_prepare()
        self.frombytes(pixels.tobytes())
        self.tile = []
        if self._exclusive_fp and self._close_exclusive_fp_after_loading:  # as ImageFile.load does
            self.fp.close()
        self.fp = None

    def _name(self) -> str:
        return str(self.filename or getattr(self.fp, "name", "") or "<stream>")


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from ckbd.api import encode

    params = {**_options, **{k: v for k, v in im.encoderinfo.items() if k in CODEC_OPTIONS}}
    try:
        data = encode(im, **params)
    except CkbdError as exc:
        raise OSError(f"cannot write {os.fsdecode(filename) or '<stream>'} as {FORMAT}: {exc}") from None
    fp.write(data)


def register(**options: Any) -> None:
    """Register the format with Pillow (``import ckbd.pillow`` already did, with no options).

    ``options`` (``model``, ``backend``, ``threads``, ``precision``, ``max_memory``; as in
    :func:`ckbd.encode`) are used to decode every opened file and are the defaults for saving.
    """
    unknown = sorted(set(options) - set(CODEC_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; expected some of {', '.join(CODEC_OPTIONS)}")
    _options.clear()
    _options.update(options)
    Image.register_open(FORMAT, CkbdImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)


register()
