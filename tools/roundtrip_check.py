"""Exactness and rate check over a folder: decoded latents equal the encoder's, bytes vs ideal length.

    python -m ckbd.tools.roundtrip_check [IMAGES_DIR] [--model DIR] [--backend onnxruntime] [--json FILE]

For every image: encode, decode, compare all symbols and latent halves bit for bit, and compare the
file size (header included) with the ideal code length under the model's tables.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ckbd.cli.options import default_kodak_dir
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


def check(encoder: Encoder, decoder: Decoder, path: Path) -> RoundTrip:
    enc = encoder.encode_detailed(read_image(path, quiet=True))
    dec = decoder.decode_detailed(enc.data)
    ideal = enc.estimated_bits / 8
    return RoundTrip(str(path), len(enc.data), ideal, 100 * (len(enc.data) / ideal - 1),
                     enc.latents.equals(dec.latents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, nargs="?", default=None, help="Folder (default: the project's Kodak).")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = args.images if args.images is not None else default_kodak_dir()
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    encoder, decoder = Encoder.open(args.model, args.backend), Decoder.open(args.model, args.backend)
    rows = [check(encoder, decoder, p) for p in progress(paths, desc="roundtrip", unit="image")]
    total, ideal = sum(r.bytes for r in rows), sum(r.estimated_bytes for r in rows)
    summary = {"images": len(rows), "all_latents_identical": all(r.latents_identical for r in rows),
               "total_bytes": total, "overhead_pct": 100 * (total / ideal - 1),
               "max_overhead_pct": max(r.overhead_pct for r in rows), "files": [asdict(r) for r in rows]}
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    raise SystemExit(0 if summary["all_latents_identical"] else 1)


if __name__ == "__main__":
    main()
