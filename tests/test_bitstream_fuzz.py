"""Fuzzing the bitstream parser: any input gives a result that packs back to the same bytes, or a
one-line BitstreamError.
"""

from __future__ import annotations

import struct
import zlib
from datetime import timedelta

from bitstream_samples import SAMPLE, raw_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckbd.errors import BitstreamError
from ckbd.runtime.bitstream import DEFAULT_MAX_PIXELS, HEADER_SIZE, Header, latent_shapes, pack, peek_header, unpack


def reseal(data: bytes) -> bytes:
    """Recompute the header CRC after editing header bytes."""
    body = data[: HEADER_SIZE - 4]
    return body + struct.pack("<I", zlib.crc32(body)) + data[HEADER_SIZE:]


FUZZ = settings(
    max_examples=250,
    deadline=timedelta(milliseconds=250),
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def unpack_or_reject(data: bytes) -> None:
    """The property: a result, or a BitstreamError; and a result packs back to the same bytes."""
    try:
        result = unpack(data)
    except BitstreamError as exc:
        assert "\n" not in str(exc)
        return
    assert pack(result) == data


edit = st.tuples(
    st.sampled_from(["set", "insert", "delete"]), st.integers(0, len(SAMPLE)), st.integers(0, 255)
)
edits = st.lists(edit, max_size=8)


def apply(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, value in ops:
        pos = min(pos, len(buf))
        if op == "set" and pos < len(buf):
            buf[pos] = value
        elif op == "insert":
            buf.insert(pos, value)
        elif op == "delete" and pos < len(buf):
            del buf[pos]
    return bytes(buf)


@FUZZ
@given(ops=edits, cut=st.integers(0, len(SAMPLE) + 4), tail=st.binary(max_size=8))
def test_fuzz_mutated_streams(ops: list[tuple[str, int, int]], cut: int, tail: bytes) -> None:
    unpack_or_reject(apply(SAMPLE, ops)[:cut] + tail)


@FUZZ
@given(ops=edits, cut=st.integers(HEADER_SIZE, len(SAMPLE) + 4), tail=st.binary(max_size=8))
def test_fuzz_mutated_streams_with_a_valid_header_crc(
    ops: list[tuple[str, int, int]], cut: int, tail: bytes
) -> None:
    # Resealing lets mutations get past the CRC, into the field and length checks.
    unpack_or_reject(reseal(apply(SAMPLE, ops)[:cut] + tail))


u8, u16, u32 = st.integers(0, 2**8 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)
small = st.integers(0, 300)


@FUZZ
@given(
    version=st.sampled_from([1, 1, 1, 0, 2, 255]),
    arch=st.one_of(st.integers(1, 4), u8),
    flags=st.sampled_from([0, 0, 0, 1, 0x80]),
    height=st.one_of(st.integers(1, 5000), u32),
    width=st.one_of(st.integers(1, 5000), u32),
    channels=st.tuples(st.one_of(st.integers(1, 400), u16), st.one_of(st.integers(1, 400), u16)),
    shapes=st.one_of(st.none(), st.tuples(u32, u32, u32, u32)),
    lengths=st.tuples(st.one_of(small, u32), st.one_of(small, u32), st.one_of(small, u32)),
    payload=st.binary(max_size=400),
)
def test_fuzz_structured_headers(
    version: int,
    arch: int,
    flags: int,
    height: int,
    width: int,
    channels: tuple[int, int],
    shapes: tuple[int, int, int, int] | None,
    lengths: tuple[int, int, int],
    payload: bytes,
) -> None:
    y_h, y_w, z_h, z_w = shapes or latent_shapes(height, width)
    data = raw_file(
        payload, version=version, arch=arch, flags=flags, height=height, width=width,
        M=channels[0], N=channels[1], y_h=min(y_h, 2**32 - 1), y_w=min(y_w, 2**32 - 1),
        z_h=z_h, z_w=z_w, z_len=lengths[0], a_len=lengths[1], na_len=lengths[2],
    )  # fmt: skip
    unpack_or_reject(data)
    try:
        header: Header | None = peek_header(data)
    except BitstreamError:
        header = None
    if header is not None:
        assert header.height * header.width <= DEFAULT_MAX_PIXELS


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzz_random_bytes_after_magic_and_version(body: bytes) -> None:
    unpack_or_reject(b"CKBD\x01" + body)
    unpack_or_reject(body)
