"""The ckbd file format, version 2: a fixed little-endian header followed by three opaque payloads.

Version 2 added one flag bit saying which entropy-parameter path coded the file (integer or
float, see docs/DETERMINISM.md); version 1 files have no flags and decode with float models. A
second version-2 flag says that the y payloads are cut into substreams (:mod:`ckbd.runtime.substreams`);
files without it are laid out exactly as before.

This module owns only the container. The payloads (z, anchors, non-anchors, in decoding order)
are whatever the range coder produced; see ``docs/BITSTREAM.md`` for the byte layout and for how
the payloads are coded.

Every field is validated before anything whose size comes from the header is allocated, so a
corrupt or hostile file fails with a one-line :class:`~ckbd.errors.BitstreamError` instead of an
out-of-memory kill or a wrong image.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from ckbd.errors import BitstreamError, ModelError, ModelMismatchError
from ckbd.runtime.manifest import ARCH_IDS
from ckbd.runtime.stages import PAD_MULTIPLE, Y_STRIDE, Z_STRIDE

MAGIC = b"CKBD"
#: The version this ckbd writes.
FORMAT_VERSION = 2
#: Versions this ckbd reads (the layout is the same; v1 defines no flags).
READABLE_VERSIONS = (1, 2)
#: Flag bit: the scale indexes and means came from the exact integer entropy-parameter graphs.
FLAG_INTEGER_PARAMS = 0x01
#: Flag bit: each y payload starts with a table of contents of its substreams.
FLAG_SUBSTREAMS = 0x02
#: Flag bits this reader understands, per version.
KNOWN_FLAGS = {1: 0, 2: FLAG_INTEGER_PARAMS | FLAG_SUBSTREAMS}
INTEGER_PATH, FLOAT_PATH = "integer", "float"  # entropy-parameter path names, as in the manifest
#: Largest padded image ``unpack`` accepts unless told otherwise (16384 x 16384): a guard against absurd
#: headers; the memory budget (``ckbd.runtime.memory``) refuses what this machine cannot decode.
DEFAULT_MAX_PIXELS = 2**28
#: Bytes of the model fingerprint carried by a file (a prefix of the manifest's sha256).
FINGERPRINT_BYTES = 8

# magic, version, arch, flags, fingerprint, height, width, M, y_h, y_w, N, z_h, z_w,
# z_len, anchor_len, nonanchor_len, symbols_crc. The header CRC (u32) follows.
_BODY = struct.Struct("<4sBBB8sIIHIIHIIIIII")
_CRC = struct.Struct("<I")
#: Bytes before the version byte is known: magic + version.
_PREFIX_SIZE = len(MAGIC) + 1
HEADER_SIZE = _BODY.size + _CRC.size

_ARCH_NAMES: dict[int, str] = {v: k for k, v in ARCH_IDS.items()}


class LatentShapes(NamedTuple):
    """Spatial sizes of y and z for an image; each checkerboard half of y is ``y_h x half_w``."""

    y_h: int
    y_w: int
    z_h: int
    z_w: int

    @property
    def half_w(self) -> int:
        return self.y_w // 2


def padded_size(height: int, width: int) -> tuple[int, int]:
    """Image size after padding each side up to a multiple of PAD_MULTIPLE (what analysis sees)."""
    return _round_up(height), _round_up(width)


def latent_shapes(height: int, width: int) -> LatentShapes:
    """y and z sizes for an image of ``height x width`` original pixels."""
    ph, pw = padded_size(height, width)
    return LatentShapes(ph // Y_STRIDE, pw // Y_STRIDE, ph // Z_STRIDE, pw // Z_STRIDE)


def _round_up(n: int) -> int:
    multiple: int = PAD_MULTIPLE
    return -(-n // multiple) * multiple


def arch_name(arch_id: int) -> str:
    """Name for an architecture id, or a placeholder for ids this ckbd does not know."""
    return _ARCH_NAMES.get(arch_id, f"unknown architecture {arch_id}")


def fingerprint_bytes(fingerprint_hex: str) -> bytes:
    """The 8 bytes a file carries for a manifest fingerprint (the first 16 hex characters)."""
    prefix = fingerprint_hex[: 2 * FINGERPRINT_BYTES]
    try:
        raw = bytes.fromhex(prefix)
    except ValueError:
        raw = b""
    if len(raw) != FINGERPRINT_BYTES:
        raise ModelError(
            f"model fingerprint {fingerprint_hex!r} is not a hex string of at least "
            f"{2 * FINGERPRINT_BYTES} characters; re-export the model"
        )
    return raw


@dataclass(frozen=True)
class Header:
    """Everything needed to check a file against a model and to size the decoder's buffers."""

    arch_id: int
    fingerprint: bytes
    height: int
    width: int
    M: int
    y_h: int
    y_w: int
    N: int
    z_h: int
    z_w: int
    z_length: int
    anchor_length: int
    nonanchor_length: int
    symbols_crc: int
    flags: int = 0
    version: int = FORMAT_VERSION

    @property
    def arch(self) -> str:
        return arch_name(self.arch_id)

    @property
    def entropy_params(self) -> str:
        """Which entropy-parameter path coded the file: ``integer`` or ``float``."""
        return INTEGER_PATH if self.flags & FLAG_INTEGER_PARAMS else FLOAT_PATH

    @property
    def substreams(self) -> bool:
        """Whether the y payloads carry tables of contents (several substreams per pass)."""
        return bool(self.flags & FLAG_SUBSTREAMS)

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def latent(self) -> LatentShapes:
        return LatentShapes(self.y_h, self.y_w, self.z_h, self.z_w)

    @property
    def z_shape(self) -> tuple[int, int, int, int]:
        """Shape of the z symbols, as the hyper-synthesis graph takes them."""
        return (1, self.N, self.z_h, self.z_w)

    @property
    def half_shape(self) -> tuple[int, int, int, int]:
        """Shape of each packed checkerboard half (anchors, non-anchors)."""
        return (1, self.M, self.y_h, self.y_w // 2)

    @property
    def payload_size(self) -> int:
        return self.z_length + self.anchor_length + self.nonanchor_length

    @property
    def total_size(self) -> int:
        """Size of the whole file this header describes."""
        return HEADER_SIZE + self.payload_size


@dataclass(frozen=True)
class Bitstream:
    """A header and the three payloads it describes, in decoding order."""

    header: Header
    z: bytes
    anchors: bytes
    nonanchors: bytes

    def __post_init__(self) -> None:
        got = (len(self.z), len(self.anchors), len(self.nonanchors))
        want = (self.header.z_length, self.header.anchor_length, self.header.nonanchor_length)
        if got != want:
            raise ValueError(f"payload lengths {got} do not match the header's {want}")

    @classmethod
    def build(
        cls,
        *,
        height: int,
        width: int,
        arch_id: int,
        fingerprint_hex: str,
        N: int,
        M: int,
        symbols_crc: int,
        z: bytes,
        anchors: bytes,
        nonanchors: bytes,
        entropy_params: str = FLOAT_PATH,
        substreams: bool = False,
    ) -> Bitstream:
        """The encoder's constructor: derives the latent shapes and payload lengths itself."""
        shapes = latent_shapes(height, width)
        header = Header(
            arch_id=arch_id,
            fingerprint=fingerprint_bytes(fingerprint_hex),
            height=height,
            width=width,
            M=M,
            y_h=shapes.y_h,
            y_w=shapes.y_w,
            N=N,
            z_h=shapes.z_h,
            z_w=shapes.z_w,
            z_length=len(z),
            anchor_length=len(anchors),
            nonanchor_length=len(nonanchors),
            symbols_crc=symbols_crc,
            flags=(FLAG_INTEGER_PARAMS if entropy_params == INTEGER_PATH else 0)
            | (FLAG_SUBSTREAMS if substreams else 0),
        )
        return cls(header, bytes(z), bytes(anchors), bytes(nonanchors))


def pack(bitstream: Bitstream) -> bytes:
    """Serialize; refuses (ValueError, a caller bug) a header that ``unpack`` would reject."""
    header = bitstream.header
    try:
        _check_fields(header, max_pixels=None)
        body = _BODY.pack(
            MAGIC,
            header.version,
            header.arch_id,
            header.flags,
            header.fingerprint,
            header.height,
            header.width,
            header.M,
            header.y_h,
            header.y_w,
            header.N,
            header.z_h,
            header.z_w,
            header.z_length,
            header.anchor_length,
            header.nonanchor_length,
            header.symbols_crc,
        )
    except (BitstreamError, struct.error) as exc:
        raise ValueError(f"refusing to pack an invalid header: {exc}") from None
    crc = _CRC.pack(zlib.crc32(body))
    return b"".join((body, crc, bitstream.z, bitstream.anchors, bitstream.nonanchors))


def peek_header(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Header:
    """Read and validate the header alone; the payloads need not be present (``ckbd info``)."""
    data = bytes(data[:HEADER_SIZE])
    _check_prefix(data)
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"truncated: the header needs {HEADER_SIZE} bytes, found {len(data)}")
    body = data[: _BODY.size]
    (stored_crc,) = _CRC.unpack_from(data, _BODY.size)
    if zlib.crc32(body) != stored_crc:
        raise BitstreamError("corrupt header: checksum mismatch")
    header = _header_from_body(body)
    _check_fields(header, max_pixels=max_pixels)
    return header


def unpack(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Bitstream:
    """Parse a whole file, validating every field before any header-sized work is done."""
    header = peek_header(data, max_pixels=max_pixels)
    found = len(data) - HEADER_SIZE
    expected = header.payload_size
    if found < expected:
        raise BitstreamError(f"truncated: expected {expected} payload bytes, found {found}")
    if found > expected:
        raise BitstreamError(
            f"trailing garbage: expected {expected} payload bytes, found {found} "
            f"({found - expected} extra)"
        )
    return split_payloads(header, data)


def split_payloads(header: Header, data: bytes) -> Bitstream:
    """The payloads of a whole file whose header and length were validated (by :func:`unpack`, or by
    ``stream_io.read_stream`` as it read the file)."""
    a = HEADER_SIZE + header.z_length
    b = a + header.anchor_length
    return Bitstream(header, bytes(data[HEADER_SIZE:a]), bytes(data[a:b]), bytes(data[b:]))


def check_model(header: Header, arch_id: int, fingerprint_hex: str, N: int, M: int,
                entropy_params: str = FLOAT_PATH) -> None:
    """Refuse to decode with a model other than the encoder's: the result would be noise.

    Call this before allocating latents: it is also what bounds N and M, which the format
    itself only limits to 16 bits. The entropy-parameter path is checked first because its
    message says what to do (the fingerprints of the two exports of one checkpoint differ too).
    """
    if header.entropy_params != entropy_params:
        raise ModelMismatchError(
            f"this file was coded with the {header.entropy_params} entropy-parameter path but the loaded "
            f"model uses the {entropy_params} path; decode with the model it was made with "
            f"(export with --entropy-params {header.entropy_params})"
        )
    expected = fingerprint_bytes(fingerprint_hex)
    if (header.arch_id, header.fingerprint, header.N, header.M) == (arch_id, expected, N, M):
        return
    raise ModelMismatchError(
        f"this file was encoded with model {header.fingerprint_hex}… ({header.arch}, "
        f"N={header.N}, M={header.M}); the loaded model is {expected.hex()}… "
        f"({arch_name(arch_id)}, N={N}, M={M}) — decode with the model it was made with"
    )


def _check_prefix(data: bytes) -> None:
    """Magic, then version: the only fields whose position every version shares."""
    if not data:
        raise BitstreamError("not a ckbd file: the input is empty")
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise BitstreamError("not a ckbd file (bad magic bytes)")
    if len(data) < _PREFIX_SIZE:
        raise BitstreamError(f"truncated: the header needs {HEADER_SIZE} bytes, found {len(data)}")
    _check_version(data[len(MAGIC)])


def _check_version(version: int) -> None:
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"format version {version} is not supported; this ckbd reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )


def _header_from_body(body: bytes) -> Header:
    (_, version, arch_id, flags, fingerprint, height, width, M, y_h, y_w, N, z_h, z_w,
     z_len, a_len, na_len, symbols_crc) = _BODY.unpack(body)  # fmt: skip
    return Header(
        arch_id=arch_id,
        fingerprint=fingerprint,
        height=height,
        width=width,
        M=M,
        y_h=y_h,
        y_w=y_w,
        N=N,
        z_h=z_h,
        z_w=z_w,
        z_length=z_len,
        anchor_length=a_len,
        nonanchor_length=na_len,
        symbols_crc=symbols_crc,
        flags=flags,
        version=version,
    )


def _check_fields(header: Header, *, max_pixels: int | None) -> None:
    """Semantic checks shared by reader and writer, in the order docs/BITSTREAM.md lists."""
    _check_version(header.version)
    if header.flags & ~KNOWN_FLAGS[header.version]:
        raise BitstreamError(f"unknown flags 0x{header.flags:02x}; this file needs a newer ckbd")
    if header.arch_id not in _ARCH_NAMES:
        raise BitstreamError(
            f"unknown architecture id {header.arch_id}; this file needs a newer ckbd"
        )
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(f"model fingerprint must be {FINGERPRINT_BYTES} bytes")
    _check_image_size(header.height, header.width, max_pixels)
    if header.N < 1 or header.M < 1:
        raise BitstreamError(f"invalid channel counts N={header.N}, M={header.M}")
    _check_latent_shapes(header)


def _check_image_size(height: int, width: int, max_pixels: int | None) -> None:
    if height < 1 or width < 1:
        raise BitstreamError(f"invalid image size {height}x{width}")
    padded_h, padded_w = padded_size(height, width)  # what the decoder allocates for
    if max_pixels is not None and padded_h * padded_w > max_pixels:
        raise BitstreamError(
            f"image of {height}x{width} ({padded_h}x{padded_w} = {padded_h * padded_w} pixels padded) "
            f"exceeds the limit of {max_pixels} pixels; raise max_pixels only for files you trust"
        )


def _check_latent_shapes(header: Header) -> None:
    expected = latent_shapes(header.height, header.width)
    if header.latent != expected:
        raise BitstreamError(
            f"inconsistent header: latent sizes {_sizes(header.latent)} do not fit a "
            f"{header.height}x{header.width} image (expected {_sizes(expected)})"
        )


def _sizes(shapes: LatentShapes) -> str:
    return f"y {shapes.y_h}x{shapes.y_w}, z {shapes.z_h}x{shapes.z_w}"
