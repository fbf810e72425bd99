"""A sample bitstream and a raw header writer, shared by the bitstream tests.

The header layout is hand-written from docs/BITSTREAM.md, independently of ckbd.runtime.bitstream,
so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import struct
import zlib

from ckbd.runtime.bitstream import Bitstream, pack

FP_HEX = "1a2b3c4d5e6f7081" + "ab" * 24  # a 64-character sha256-like hex string
ARCH_ID = 1  # mbt2018-ckbd

DOC_LAYOUT = struct.Struct("<4sBBB8sIIHIIHIIIIII")
FIELDS = (
    "magic", "version", "arch", "flags", "fp", "height", "width", "M", "y_h", "y_w", "N",
    "z_h", "z_w", "z_len", "a_len", "na_len", "symbols_crc",
)  # fmt: skip


def raw_file(payload: bytes = b"", /, **overrides: int | bytes) -> bytes:
    """A file with a correct header CRC, so checks after the CRC can be reached."""
    fields: dict[str, int | bytes] = {
        "magic": b"CKBD", "version": 2, "arch": ARCH_ID, "flags": 0,
        "fp": bytes.fromhex(FP_HEX[:16]), "height": 100, "width": 150,
        "M": 192, "y_h": 8, "y_w": 12, "N": 128, "z_h": 2, "z_w": 3,
        "z_len": 0, "a_len": 0, "na_len": len(payload), "symbols_crc": 0,
    }  # fmt: skip
    fields.update(overrides)
    body = DOC_LAYOUT.pack(*(fields[name] for name in FIELDS))
    return body + struct.pack("<I", zlib.crc32(body)) + payload


def sample(height: int = 100, width: int = 150) -> Bitstream:
    return Bitstream.build(
        height=height, width=width, arch_id=ARCH_ID, fingerprint_hex=FP_HEX, N=128, M=192,
        symbols_crc=0xDEADBEEF, z=b"zzz", anchors=b"anchor-bytes", nonanchors=b"non-anchor!",
    )  # fmt: skip


SAMPLE = pack(sample())
