"""``ckbd encode`` and ``ckbd decode``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ckbd.cli.batch import expand_inputs, finish, output_paths, run_batch
from ckbd.cli.codec_options import (
    BackendOption,
    ModelOption,
    PrecisionOption,
    ThreadsOption,
    open_codec,
)

SUFFIX = ".ckbd"


def register(app: typer.Typer) -> None:
    app.command("encode")(encode_command)
    app.command("decode")(decode_command)


def encode_command(
    images: list[Path] = typer.Argument(..., help="Images or folders of images."),
    out: Path = typer.Option(None, "--output", "-o", help="Output file (one input) or folder (several)."),
    model: Path = ModelOption,
    backend: str = BackendOption,
    threads: int = ThreadsOption,
    with_psnr: bool = typer.Option(False, "--psnr", help="Also decode each result and report PSNR."),
    json_path: Path = typer.Option(None, "--json", help="Write a per-image summary (bytes, bpp, PSNR)."),
) -> None:
    """Compress images to .ckbd files."""
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import IMAGE_SUFFIXES, read_image
    from ckbd.tools.metrics import psnr

    inputs = expand_inputs(images, IMAGE_SUFFIXES)
    encoder = open_codec(Encoder, model, backend, threads)
    decoder = open_codec(Decoder, model, backend, threads) if with_psnr else None

    def work(src: Path, dst: Path) -> dict[str, Any]:
        image = read_image(src)
        data = encoder.encode(image)
        atomic_write_bytes(dst, data)
        row: dict[str, Any] = {"bytes": len(data), "bpp": 8 * len(data) / (image.shape[0] * image.shape[1])}
        if decoder is not None:
            row["psnr"] = psnr(image, decoder.decode(data))
        return row

    report = run_batch(list(zip(inputs, output_paths(inputs, out, SUFFIX))), work, "encode")
    for r in report.results:
        extra = f", {r['psnr']:.2f} dB" if "psnr" in r else ""
        typer.echo(f"{r['file']} -> {r['output']}: {r['bytes']} bytes, {r['bpp']:.4f} bpp{extra}")
    finish(report, json_path)


def decode_command(
    files: list[Path] = typer.Argument(..., help=".ckbd files or folders of them."),
    out: Path = typer.Option(None, "--output", "-o", help="Output image (one input) or folder (several); PNG by default."),
    model: Path = ModelOption,
    backend: str = BackendOption,
    threads: int = ThreadsOption,
    precision: str = PrecisionOption,
    original: Path = typer.Option(None, "--original", help="Original image (or folder, matched by name) to report PSNR."),
    json_path: Path = typer.Option(None, "--json", help="Write a per-file summary (bytes, bpp, PSNR)."),
) -> None:
    """Decompress .ckbd files to images."""
    from ckbd.runtime.codec import Decoder
    from ckbd.runtime.imageio import read_image, write_image
    from ckbd.tools.metrics import psnr

    inputs = expand_inputs(files, {SUFFIX})
    decoder = open_codec(Decoder, model, backend, threads, precision)

    def work(src: Path, dst: Path) -> dict[str, Any]:
        try:
            data = src.read_bytes()
        except OSError as exc:
            from ckbd.errors import CkbdError

            raise CkbdError(f"cannot read {src}: {exc.strerror}") from None
        image = decoder.decode(data)
        write_image(dst, image)
        row: dict[str, Any] = {"bytes": len(data), "bpp": 8 * len(data) / (image.shape[0] * image.shape[1])}
        ref = _original_for(src, original)
        if ref is not None:
            row["psnr"] = psnr(read_image(ref, quiet=True), image)
        return row

    report = run_batch(list(zip(inputs, output_paths(inputs, out, ".png"))), work, "decode")
    for r in report.results:
        extra = f", {r['psnr']:.2f} dB" if "psnr" in r else ""
        typer.echo(f"{r['file']} -> {r['output']}{extra}")
    finish(report, json_path)


def _original_for(src: Path, original: Path | None) -> Path | None:
    if original is None:
        return None
    if original.is_dir():
        matches = [p for p in original.iterdir() if p.stem == src.stem]
        return matches[0] if matches else None
    return original
