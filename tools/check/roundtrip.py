"""Exactness and rate check over a folder: decoded latents equal the encoder's, bytes vs ideal length.

For every image: encode, decode, compare all symbols and latent halves bit for bit, and compare the
file size (header included) with the ideal code length under the model's tables. The command is
``ckbd check roundtrip`` (:mod:`ckbd.cli.check.roundtrip`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckbd.errors import CkbdError
from ckbd.progress import progress
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.imageio import IMAGE_SUFFIXES, read_image


@dataclass
class RoundTrip:
    file: str
    bytes: int
    estimated_bytes: float
    overhead_pct: float
    latents_identical: bool


@dataclass
class RoundTripReport:
    """Every image's round trip; the summary properties are what the command prints."""

    files: list[RoundTrip] = field(default_factory=list)

    @property
    def all_latents_identical(self) -> bool:
        return all(r.latents_identical for r in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.files)

    @property
    def overhead_pct(self) -> float:
        return 100 * (self.total_bytes / sum(r.estimated_bytes for r in self.files) - 1)

    def summary(self) -> dict[str, Any]:
        return {"images": len(self.files), "all_latents_identical": self.all_latents_identical,
                "total_bytes": self.total_bytes, "overhead_pct": self.overhead_pct,
                "max_overhead_pct": max(r.overhead_pct for r in self.files)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "files": [asdict(r) for r in self.files]}


def check(encoder: Encoder, decoder: Decoder, path: Path) -> RoundTrip:
    enc = encoder.encode_detailed(read_image(path, quiet=True))
    dec = decoder.decode_detailed(enc.data)
    ideal = enc.estimated_bits / 8
    return RoundTrip(str(path), len(enc.data), ideal, 100 * (len(enc.data) / ideal - 1),
                     enc.latents.equals(dec.latents))


def images_in(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (sorted); an error when there are none."""
    if not folder.is_dir():
        raise CkbdError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CkbdError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def run_roundtrip(encoder: Encoder, decoder: Decoder, paths: Sequence[Path]) -> RoundTripReport:
    """Round-trip every image through one encoder and one decoder (of the same model)."""
    return RoundTripReport([check(encoder, decoder, p) for p in progress(paths, desc="roundtrip", unit="image")])
