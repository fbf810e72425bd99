"""The symbols CRC a file's header carries: what the decoder checks its decoded symbols against.

Hashing decoded symbols (not payload bytes) catches corrupt payloads, which a range decoder decodes
into *something*, and an encoder and decoder that disagree on the indexes; docs/BITSTREAM.md says why.
"""

from __future__ import annotations

import zlib

import numpy as np


def symbols_crc32(*arrays: np.ndarray) -> int:
    """CRC32 of the arrays' values as int32 little-endian, in C order, fed one after another.

    The codec passes z symbols, then anchor symbols, then non-anchor symbols.
    """
    crc = 0
    for array in arrays:
        values = np.asarray(array)
        if values.dtype.kind not in "iu":
            raise TypeError(f"symbols must be integers, got {values.dtype}")
        if values.dtype != np.dtype("<i4"):
            if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
                raise ValueError("symbols do not fit in int32")
            values = values.astype("<i4")
        crc = zlib.crc32(np.ascontiguousarray(values).data, crc)
    return crc
