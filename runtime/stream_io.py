"""Reading a .ckbd file header first, so a hostile or huge input costs a few bytes, not memory.

``bitstream.unpack`` validates a file that is already in memory; this module decides how much
of a file (or of stdin) may be read at all. It reads the fixed header, validates it (CRC, fields,
pixel limit, and the caller's model/memory checks), compares the file size with the size the
header announces before reading further, and then reads exactly the payload bytes the header
names, which are bounded by what the announced latents can produce. ``/dev/zero``, a 20 GB file
or a header promising gigabytes of payload are refused after reading at most the header.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckbd.errors import BitstreamError, CkbdError
from ckbd.runtime import bitstream as bs
from ckbd.runtime.substreams import MAX_SUBSTREAMS

#: A range-coded symbol costs at most 24 bits for its table entry plus, when escaped, a 50-way
#: header and two 12-bit mantissa chunks (see ``coder.py``): under 64 bits in all.
MAX_BYTES_PER_SYMBOL = 8
#: Per-stream allowance for the range coder's final words (and a substream's length in its table
#: of contents).
PAYLOAD_SLACK = 64
#: Name used in messages for standard input.
STDIN_NAME = "<stdin>"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StreamData:
    """A validated header and the file's bytes (only the header's when payloads were skipped)."""

    header: bs.Header
    data: bytes
    size: int  # bytes in the whole file
    #: The ``check`` the header passed when read (a decoder's ``check_header``), so that decoding it does
    #: not check it again.
    checked_by: Callable[[bs.Header], None] | None = None


def max_payload_bytes(header: bs.Header) -> int:
    """Most payload bytes a genuine encoder can write for the latents this header announces."""
    z_symbols = header.N * header.z_h * header.z_w
    y_symbols = header.M * header.y_h * header.y_w
    streams = 1 + 2 * MAX_SUBSTREAMS  # z, and each y pass in substreams
    return MAX_BYTES_PER_SYMBOL * (z_symbols + y_symbols) + streams * PAYLOAD_SLACK


def is_stdio(path: Path | str | None) -> bool:
    """``-`` names standard input or output, as in gzip and ffmpeg."""
    return path is not None and str(path) == "-"


def read_stream(source: Path | str | BinaryIO, max_pixels: int | None = bs.DEFAULT_MAX_PIXELS,
                check: Callable[[bs.Header], None] | None = None, payloads: bool = True) -> StreamData:
    """Read a stream from a path, ``-`` (stdin) or a binary file object, header first.

    ``check`` runs on the validated header before any payload byte is read (the decoder passes its
    model and memory checks). ``payloads=False`` verifies the size but keeps only the header.
    """
    if isinstance(source, (str, Path)):
        if is_stdio(source):
            return _read(sys.stdin.buffer, STDIN_NAME, max_pixels, check, payloads)
        try:
            with open(source, "rb") as fh:
                return _read(fh, str(source), max_pixels, check, payloads)
        except OSError as exc:
            raise CkbdError(f"cannot read {source}: {exc.strerror or exc}") from None
    return _read(source, getattr(source, "name", "stream"), max_pixels, check, payloads)


def _read(fh: BinaryIO, name: str, max_pixels: int | None, check: Callable[[bs.Header], None] | None,
          payloads: bool) -> StreamData:
    head = _read_exact(fh, bs.HEADER_SIZE)
    header = bs.peek_header(head, max_pixels=max_pixels)
    left = _bytes_left(fh)
    if left is not None:
        _check_found(header.payload_size, left)
    if check is not None:
        check(header)
    limit = max_payload_bytes(header)
    if header.payload_size > limit:
        raise BitstreamError(
            f"corrupt header: {header.payload_size} payload bytes announced, but a "
            f"{header.height}x{header.width} image codes to at most {limit}"
        )
    if not payloads and left is not None:
        return StreamData(header, head, bs.HEADER_SIZE + left, check)
    if payloads:
        body = _read_exact(fh, header.payload_size)
        found = len(body)
    else:
        body, found = b"", _skip(fh, header.payload_size)
    if found == header.payload_size and _read_exact(fh, 1):
        raise BitstreamError(f"trailing garbage: expected {found} payload bytes, found more")
    _check_found(header.payload_size, found)
    return StreamData(header, head + body, bs.HEADER_SIZE + found, check)


def _check_found(expected: int, found: int) -> None:
    if found < expected:
        raise BitstreamError(f"truncated: expected {expected} payload bytes, found {found}")
    if found > expected:
        raise BitstreamError(f"trailing garbage: expected {expected} payload bytes, found more")


def _bytes_left(fh: BinaryIO) -> int | None:
    """Bytes after the read position of a regular file; None for pipes, devices and memory streams."""
    try:
        st = os.fstat(fh.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size - fh.tell()


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at end of file), in bounded chunks."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = fh.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _skip(fh: BinaryIO, n: int) -> int:
    """Read and drop up to ``n`` bytes; returns how many there were."""
    seen = 0
    while seen < n:
        chunk = fh.read(min(n - seen, _CHUNK))
        if not chunk:
            break
        seen += len(chunk)
    return seen


def read_limited(fh: BinaryIO, limit: int, name: str = STDIN_NAME) -> bytes:
    """All of ``fh`` (e.g. an image on stdin), refused once it passes ``limit`` bytes."""
    data = _read_exact(fh, limit + 1)
    if len(data) > limit:
        raise CkbdError(f"{name}: more than {limit} bytes; larger inputs must be files")
    return data
