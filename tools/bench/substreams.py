"""What the substreams cost on real images: each image encoded by the encoder's rule and with one stream
per pass (the files written before substreams), the bytes the cuts add and the substreams chosen.

The two encodings carry the same symbols (checked through the symbols CRC), so the difference is only
the cuts: each extra substream's final words and its length in the table of contents. Images may be
resized (bicubic) first, which is how 1080p and 8K figures are made from the Kodak photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckbd.progress import progress as progress_bar
from ckbd.runtime import bitstream, substreams
from ckbd.runtime.codec import Encoder
from ckbd.runtime.image_size import ImageSize
from ckbd.runtime.imageio import read_image, resized


@dataclass(frozen=True)
class ImageOverhead:
    name: str
    height: int
    width: int
    substreams: tuple[int, int]  # of the anchor and the non-anchor pass, by the encoder's rule
    bytes_single: int  # the whole stream with one substream per pass
    bytes_chosen: int  # the whole stream as the encoder writes it

    @property
    def overhead_pct(self) -> float:
        return 100 * (self.bytes_chosen / self.bytes_single - 1)


@dataclass(frozen=True)
class OverheadReport:
    model: str
    images: list[ImageOverhead]

    @property
    def bytes_single(self) -> int:
        return sum(image.bytes_single for image in self.images)

    @property
    def bytes_chosen(self) -> int:
        return sum(image.bytes_chosen for image in self.images)

    @property
    def overhead_pct(self) -> float:
        return 100 * (self.bytes_chosen / self.bytes_single - 1) if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "bytes_single": self.bytes_single,
            "bytes_chosen": self.bytes_chosen,
            "overhead_pct": self.overhead_pct,
            "images": [{**asdict(image), "overhead_pct": image.overhead_pct} for image in self.images],
        }


def measure_overhead(paths: Sequence[Path], model: Path | None = None, size: ImageSize | None = None,
                     threads: int = 0, progress: bool = True) -> OverheadReport:
    """Encode each of ``paths`` (resized to ``size`` when given) both ways with ``model`` (the shipped one
    when None) on ONNX Runtime with ``threads`` threads."""
    rows = []
    with Encoder.open(model, threads=threads) as encoder:
        label = f"{encoder.manifest.arch} N={encoder.manifest.N} M={encoder.manifest.M}"
        for path in progress_bar(paths, desc="bench substreams", unit="image", enabled=progress):
            image = read_image(path, quiet=True)
            if size is not None:
                image = resized(image, size.height, size.width)
            encoder.max_substreams = substreams.MAX_SUBSTREAMS
            chosen = encoder.encode_detailed(image, estimate=False)
            encoder.max_substreams = 1
            single = encoder.encode_detailed(image, estimate=False)
            if chosen.latents.crc32() != single.latents.crc32():
                raise RuntimeError(f"{path.name}: the two encodings coded different symbols")  # a bug
            stream = bitstream.unpack(chosen.data)
            counts = substreams.counts(stream.anchors, stream.nonanchors, stream.header.y_h,
                                       stream.header.substreams)
            rows.append(ImageOverhead(path.name, image.shape[0], image.shape[1], counts, len(single.data),
                                      len(chosen.data)))
    return OverheadReport(label, rows)


def format_table(report: OverheadReport) -> str:
    """One line per image and the total, in the units RESULTS uses."""
    lines = [f"model {report.model}", f"{'image':<16} {'size':>11} {'K':>7} {'bytes, K=1':>12} "
                                      f"{'bytes, chosen':>14} {'overhead':>9}"]
    for image in report.images:
        k = f"{image.substreams[0]}/{image.substreams[1]}"
        lines.append(f"{image.name:<16} {f'{image.width}x{image.height}':>11} {k:>7} {image.bytes_single:>12,} "
                     f"{image.bytes_chosen:>14,} {image.overhead_pct:>8.3f}%")
    lines.append(f"{'total':<16} {'':>11} {'':>7} {report.bytes_single:>12,} {report.bytes_chosen:>14,} "
                 f"{report.overhead_pct:>8.3f}%")
    return "\n".join(lines)
