"""Bitstream v1 container: layout, round trip, every rejection, writer-side and model checks.

Fuzzing of the parser is in test_bitstream_fuzz.py.
"""

from __future__ import annotations

import tracemalloc
import zlib
from dataclasses import replace

import numpy as np
import pytest
from bitstream_samples import ARCH_ID, DOC_LAYOUT, FP_HEX, SAMPLE, raw_file, sample

from ckbd.errors import BitstreamError, ModelError, ModelMismatchError
from ckbd.runtime.bitstream import (
    DEFAULT_MAX_PIXELS,
    HEADER_SIZE,
    Bitstream,
    LatentShapes,
    check_model,
    latent_shapes,
    pack,
    padded_size,
    peek_header,
    unpack,
)
from ckbd.runtime.symbols_crc import symbols_crc32

OTHER_FP_HEX = "9f8e7d6c5b4a3928" + "cd" * 24


def rejects(data: bytes, match: str, **kwargs: int) -> BitstreamError:
    with pytest.raises(BitstreamError, match=match) as info:
        unpack(data, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --- layout and helpers ---------------------------------------------------------------------


def test_header_size_matches_documented_layout() -> None:
    assert HEADER_SIZE == DOC_LAYOUT.size + 4 == 63


def test_pack_writes_the_documented_bytes() -> None:
    payload = b"zzz" + b"anchor-bytes" + b"non-anchor!"
    expected = raw_file(payload, z_len=3, a_len=12, na_len=11, symbols_crc=0xDEADBEEF)
    assert SAMPLE == expected


@pytest.mark.parametrize(
    ("size", "padded", "shapes"),
    [
        ((1, 1), (64, 64), (4, 4, 1, 1)),
        ((64, 64), (64, 64), (4, 4, 1, 1)),
        ((65, 128), (128, 128), (8, 8, 2, 2)),
        ((100, 150), (128, 192), (8, 12, 2, 3)),
        ((1080, 1920), (1088, 1920), (68, 120, 17, 30)),
    ],
)
def test_padded_size_and_latent_shapes(
    size: tuple[int, int], padded: tuple[int, int], shapes: tuple[int, int, int, int]
) -> None:
    assert padded_size(*size) == padded
    assert latent_shapes(*size) == LatentShapes(*shapes)
    assert latent_shapes(*size).half_w * 2 == shapes[1]


# --- round trip -----------------------------------------------------------------------------


def test_round_trip() -> None:
    original = sample()
    decoded = unpack(SAMPLE)
    assert decoded == original
    assert decoded.header.fingerprint_hex == FP_HEX[:16]
    assert decoded.header.arch == "mbt2018-ckbd"
    assert decoded.header.z_shape == (1, 128, 2, 3)
    assert decoded.header.half_shape == (1, 192, 8, 6)
    assert decoded.header.total_size == len(SAMPLE)
    assert pack(decoded) == SAMPLE


def test_round_trip_with_empty_payloads_and_bytearray_input() -> None:
    bs = Bitstream.build(
        height=1, width=1, arch_id=4, fingerprint_hex=FP_HEX, N=1, M=1,
        symbols_crc=0, z=b"", anchors=b"", nonanchors=b"",
    )  # fmt: skip
    data = pack(bs)
    assert len(data) == HEADER_SIZE
    assert unpack(bytearray(data)) == bs


def test_peek_header_needs_only_the_header() -> None:
    assert peek_header(SAMPLE[:HEADER_SIZE]) == sample().header


# --- rejections -----------------------------------------------------------------------------


def test_empty_input() -> None:
    rejects(b"", "not a ckbd file")


@pytest.mark.parametrize(
    "data", [b"PNG\x89" + SAMPLE[4:], b"\x00", b"ckbd" + SAMPLE[4:], b"X" * 100]
)
def test_wrong_magic(data: bytes) -> None:
    rejects(data, "^not a ckbd file")


@pytest.mark.parametrize("n", [1, 3, 4, 5, 20, HEADER_SIZE - 1])
def test_fewer_bytes_than_a_header(n: int) -> None:
    rejects(SAMPLE[:n], f"^truncated: the header needs {HEADER_SIZE} bytes, found {n}$")
    with pytest.raises(BitstreamError):
        peek_header(SAMPLE[:n])


def test_unsupported_version() -> None:
    data = SAMPLE[:4] + bytes([7]) + SAMPLE[5:]
    rejects(data, r"^format version 7 is not supported; this ckbd reads versions 1, 2$")


def test_version_1_has_no_flags_and_version_2_knows_the_integer_and_substreams_flags() -> None:
    assert unpack(raw_file(version=1)).header.entropy_params == "float"
    rejects(raw_file(version=1, flags=1), r"^unknown flags 0x01; this file needs a newer ckbd$")
    rejects(raw_file(version=1, flags=2), r"^unknown flags 0x02; this file needs a newer ckbd$")
    assert unpack(raw_file(version=2, flags=1)).header.entropy_params == "integer"
    assert unpack(raw_file(version=2, flags=0)).header.entropy_params == "float"
    assert not unpack(raw_file(version=2, flags=1)).header.substreams
    both = unpack(raw_file(version=2, flags=3)).header
    assert both.substreams and both.entropy_params == "integer"
    rejects(raw_file(version=2, flags=4), r"^unknown flags 0x04; this file needs a newer ckbd$")


def test_build_sets_the_substreams_flag() -> None:
    split = replace(sample(), header=replace(sample().header, flags=2))
    assert unpack(pack(split)).header.substreams
    built = Bitstream.build(height=100, width=150, arch_id=ARCH_ID, fingerprint_hex=FP_HEX, N=128, M=192,
                            symbols_crc=1, z=b"", anchors=b"a", nonanchors=b"n", entropy_params="integer",
                            substreams=True)
    assert built.header.flags == 3 and unpack(pack(built)) == built


def test_entropy_parameter_path_mismatch_says_what_to_do() -> None:
    header = unpack(raw_file(version=2, flags=1)).header
    with pytest.raises(ModelMismatchError, match="integer entropy-parameter path.*--entropy-params integer"):
        check_model(header, ARCH_ID, FP_HEX, 128, 192, entropy_params="float")
    check_model(header, ARCH_ID, FP_HEX, 128, 192, entropy_params="integer")


def test_every_flipped_header_bit_is_caught() -> None:
    for bit in range(HEADER_SIZE * 8):
        data = bytearray(SAMPLE)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            unpack(bytes(data))


def test_flipped_body_bit_reports_corrupt_header() -> None:
    data = bytearray(SAMPLE)
    data[20] ^= 0x10  # inside the width field
    rejects(bytes(data), "^corrupt header: checksum mismatch$")


def test_huge_image_is_refused_before_any_allocation() -> None:
    side = 10**6
    y = -(-side // 64) * 4
    data = raw_file(height=side, width=side, y_h=y, y_w=y, z_h=y // 4, z_w=y // 4, na_len=0)
    tracemalloc.start()
    try:
        rejects(data, r"1000000x1000000 .* exceeds the limit of 268435456 pixels")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_max_pixels_is_a_parameter() -> None:
    data = raw_file(height=64, width=64, y_h=4, y_w=4, z_h=1, z_w=1)
    assert unpack(data, max_pixels=64 * 64).header.height == 64
    rejects(data, "exceeds the limit of 4095 pixels", max_pixels=64 * 64 - 1)
    assert DEFAULT_MAX_PIXELS == 2**28


@pytest.mark.parametrize("size", [(0, 150), (100, 0), (0, 0)])
def test_zero_image_size(size: tuple[int, int]) -> None:
    rejects(raw_file(height=size[0], width=size[1]), "^invalid image size")


@pytest.mark.parametrize("field", ["N", "M"])
def test_zero_channels(field: str) -> None:
    rejects(raw_file(**{field: 0}), "^invalid channel counts")


@pytest.mark.parametrize(
    "overrides",
    [{"y_h": 12}, {"y_w": 8}, {"z_h": 1}, {"z_w": 4}, {"y_h": 0, "y_w": 0, "z_h": 0, "z_w": 0},
     {"height": 200}],
)  # fmt: skip
def test_inconsistent_latent_shape(overrides: dict[str, int]) -> None:
    rejects(raw_file(**overrides), "^inconsistent header: latent sizes")


@pytest.mark.parametrize("flags", [4, 0x80, 0xFF])
def test_unknown_flags(flags: int) -> None:
    rejects(raw_file(flags=flags), f"^unknown flags 0x{flags:02x}")


@pytest.mark.parametrize("arch", [0, 5, 255])
def test_unknown_arch(arch: int) -> None:
    rejects(raw_file(arch=arch), f"^unknown architecture id {arch};")


def test_truncated_payload_at_several_cut_points() -> None:
    payload_size = len(SAMPLE) - HEADER_SIZE
    for cut in (HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 3, HEADER_SIZE + 15, len(SAMPLE) - 1):
        found = cut - HEADER_SIZE
        rejects(SAMPLE[:cut], f"^truncated: expected {payload_size} payload bytes, found {found}$")


def test_payload_lengths_far_beyond_the_file() -> None:
    data = raw_file(b"abc", z_len=2**32 - 1, a_len=2**32 - 1, na_len=2**32 - 1)
    rejects(data, f"^truncated: expected {3 * (2**32 - 1)} payload bytes, found 3$")


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10])
def test_trailing_bytes(extra: bytes) -> None:
    rejects(SAMPLE + extra, f"^trailing garbage: .* \\({len(extra)} extra\\)$")


# --- writer-side checks ---------------------------------------------------------------------


def test_pack_refuses_a_header_unpack_would_reject() -> None:
    good = sample()
    for bad in (
        replace(good.header, y_h=good.header.y_h + 4),
        replace(good.header, flags=4),
        replace(good.header, arch_id=99),
        replace(good.header, fingerprint=b"short"),
        replace(good.header, M=70000),
        replace(good.header, symbols_crc=-1),
    ):
        with pytest.raises(ValueError, match="refusing to pack"):
            pack(Bitstream(bad, good.z, good.anchors, good.nonanchors))


def test_bitstream_refuses_payloads_that_disagree_with_the_header() -> None:
    good = sample()
    with pytest.raises(ValueError, match="payload lengths"):
        Bitstream(good.header, good.z + b"x", good.anchors, good.nonanchors)


# --- model check ----------------------------------------------------------------------------


def test_check_model_accepts_the_encoding_model() -> None:
    check_model(sample().header, ARCH_ID, FP_HEX, 128, 192)
    check_model(sample().header, ARCH_ID, FP_HEX.upper(), 128, 192)


@pytest.mark.parametrize(
    ("arch_id", "fp", "N", "M"),
    [(ARCH_ID, OTHER_FP_HEX, 128, 192), (2, FP_HEX, 128, 192), (ARCH_ID, FP_HEX, 192, 192),
     (ARCH_ID, FP_HEX, 128, 320)],
)  # fmt: skip
def test_check_model_mismatch(arch_id: int, fp: str, N: int, M: int) -> None:
    with pytest.raises(ModelMismatchError) as info:
        check_model(sample().header, arch_id, fp, N, M)
    message = str(info.value)
    assert message.startswith(f"this file was encoded with model {FP_HEX[:16]}… (mbt2018-ckbd")
    assert f"the loaded model is {fp[:16]}…" in message
    assert message.endswith("decode with the model it was made with")
    assert "\n" not in message


@pytest.mark.parametrize("fp", ["", "1a2b", "zz" * 32])
def test_check_model_with_a_broken_manifest_fingerprint(fp: str) -> None:
    with pytest.raises(ModelError, match="fingerprint"):
        check_model(sample().header, ARCH_ID, fp, 128, 192)


# --- symbols CRC ----------------------------------------------------------------------------


def test_symbols_crc32_is_incremental_over_int32_little_endian() -> None:
    rng = np.random.default_rng(0)
    z = rng.integers(-50, 50, size=(1, 4, 2, 3), dtype=np.int32)
    a = rng.integers(-50, 50, size=(1, 8, 4, 2), dtype=np.int32)
    na = rng.integers(-50, 50, size=(1, 8, 4, 2), dtype=np.int32)
    expected = zlib.crc32(b"".join(x.astype("<i4").tobytes() for x in (z, a, na)))
    assert symbols_crc32(z, a, na) == expected
    assert symbols_crc32(z.astype(np.int64), a.astype(">i4"), na.astype(np.int16)) == expected
    assert symbols_crc32(np.asfortranarray(z), a, na) == expected
    assert symbols_crc32(z, na, a) != expected
    assert symbols_crc32() == 0


def test_symbols_crc32_rejects_values_it_cannot_represent() -> None:
    with pytest.raises(TypeError):
        symbols_crc32(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError):
        symbols_crc32(np.array([2**31], dtype=np.int64))
