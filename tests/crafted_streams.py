"""Hand-made hostile .ckbd streams for the API and Pillow tests: real streams with header fields
rewritten and the header CRC recomputed (layout from docs/BITSTREAM.md via bitstream_samples)."""

from __future__ import annotations

import struct
import zlib

from bitstream_samples import DOC_LAYOUT, FIELDS

from ckbd.runtime import bitstream as bs


def reseal(data: bytes, **changes: int | bytes) -> bytes:
    """``data`` with header ``changes`` (names as in ``bitstream_samples.FIELDS``) and a valid header CRC."""
    fields = dict(zip(FIELDS, DOC_LAYOUT.unpack_from(data)))
    fields.update(changes)
    body = DOC_LAYOUT.pack(*(fields[name] for name in FIELDS))
    return body + struct.pack("<I", zlib.crc32(body)) + data[bs.HEADER_SIZE:]


def resized(data: bytes, height: int, width: int) -> bytes:
    """The header of ``data`` announcing a ``height x width`` image (consistent latent sizes), no payload."""
    shapes = bs.latent_shapes(height, width)
    return reseal(data[: bs.HEADER_SIZE], height=height, width=width, y_h=shapes.y_h, y_w=shapes.y_w,
                  z_h=shapes.z_h, z_w=shapes.z_w)
