"""``ckbd encode`` and ``ckbd decode``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ckbd.cli.batch import expand_inputs, finish, run_batch
from ckbd.cli.codec_options import (
    BackendOption,
    CoderThreadsOption,
    DeviceOption,
    ForceOption,
    ModelOption,
    PrecisionOption,
    ThreadsOption,
)
from ckbd.cli.options import QuietOption
from ckbd.cli.outputs import check_output, is_stdout, pair_outputs, plan_outputs, write_output
from ckbd.cli.run_plan import (
    AddressOption,
    CodecOptions,
    ConcurrencyOption,
    EngineOption,
    JobsOption,
    MaxMemoryOption,
    Opener,
    Placement,
    RunPlan,
    ServerOption,
)

if TYPE_CHECKING:
    import numpy as np

SUFFIX = ".ckbd"


def register(app: typer.Typer) -> None:
    app.command("encode")(encode_command)
    app.command("decode")(decode_command)


def encode_command(
    images: list[Path] = typer.Argument(..., help="Images or folders of images; - reads one image from stdin."),
    out: Path = typer.Option(None, "--output", "-o",
                             help="Output file (one input), folder (several), or - for stdout."),
    force: bool = ForceOption,
    model: Path = ModelOption,
    backend: str = BackendOption,
    threads: int = ThreadsOption,
    coder_threads: int = CoderThreadsOption,
    precision: str = PrecisionOption,
    device: str = DeviceOption,
    with_psnr: bool = typer.Option(False, "--psnr", help="Also decode each result and report PSNR."),
    json_path: Path = typer.Option(None, "--json", help="Write a per-image summary (bytes, bpp, PSNR)."),
    jobs: int = JobsOption,
    max_memory: str = MaxMemoryOption,
    server: str = ServerOption,
    concurrency: int = ConcurrencyOption,
    engine: str = EngineOption,
    address: str = AddressOption,
    quiet: bool = QuietOption,
) -> None:
    """Compress images to .ckbd files (folders are searched recursively; -o FOLDER keeps their layout)."""
    from ckbd.runtime.imageio import IMAGE_SUFFIXES
    from ckbd.runtime.metrics import psnr
    from ckbd.runtime.rate import bits_per_pixel

    inputs = expand_inputs(images, IMAGE_SUFFIXES)
    pairs = pair_outputs(inputs, out, SUFFIX, images)
    check_output(json_path, force, inputs)
    outputs = plan_outputs(pairs, force)
    run = RunPlan(CodecOptions(model, backend, threads, precision, device, coder_threads, max_memory),
                  Placement(jobs, server, concurrency, engine, address))
    size_check = None if run.package is None else _budget_check(run.package.manifest, run.budget)

    def codecs(open_codec: Opener) -> tuple[Any, Any]:
        return open_codec("encode"), open_codec("decode") if with_psnr else None

    def work(coders: tuple[Any, Any], src: Path, dst: Path) -> dict[str, Any]:
        encoder, decoder = coders
        image = _read_input_image(src, size_check)
        data = encoder.encode(image)
        write_output(dst, data, force)
        row: dict[str, Any] = {"bytes": len(data), "bpp": bits_per_pixel(len(data), *image.shape[:2])}
        if decoder is not None:
            row["psnr"] = psnr(image, decoder.decode(data))
        return row

    report = run_batch(outputs.jobs, run.map(outputs.jobs, work, codecs), "encode", outputs.refused)
    for r in report.results:
        extra = f", {r['psnr']:.2f} dB" if "psnr" in r else ""
        typer.echo(f"{r['file']} -> {r['output']}: {r['bytes']} bytes, {r['bpp']:.4f} bpp{extra}", err=_to_stdout(pairs))
    finish(report, json_path)


def decode_command(
    files: list[Path] = typer.Argument(..., help=".ckbd files or folders of them; - reads one from stdin."),
    out: Path = typer.Option(None, "--output", "-o",
                             help="Output image (one input), folder (several), or - for stdout; PNG by default."),
    force: bool = ForceOption,
    image_format: str = typer.Option(None, "--format",
                                     help="Image format to write (png, tiff, webp, bmp, ppm; jpeg/gif/ico only when named)."),
    model: Path = ModelOption,
    backend: str = BackendOption,
    threads: int = ThreadsOption,
    coder_threads: int = CoderThreadsOption,
    precision: str = PrecisionOption,
    device: str = DeviceOption,
    original: Path = typer.Option(None, "--original", help="Original image (or folder, matched by name) to report PSNR."),
    json_path: Path = typer.Option(None, "--json", help="Write a per-file summary (bytes, bpp, PSNR)."),
    jobs: int = JobsOption,
    max_memory: str = MaxMemoryOption,
    server: str = ServerOption,
    concurrency: int = ConcurrencyOption,
    engine: str = EngineOption,
    address: str = AddressOption,
    quiet: bool = QuietOption,
) -> None:
    """Decompress .ckbd files to images (folders are searched recursively; -o FOLDER keeps their layout)."""
    from ckbd.errors import CkbdError
    from ckbd.runtime.imageio import OutputFormat, image_bytes, output_format
    from ckbd.runtime.metrics import psnr
    from ckbd.runtime.rate import bits_per_pixel
    from ckbd.runtime.stream_io import read_stream

    inputs = expand_inputs(files, {SUFFIX})
    suffix = f".{image_format.lower().lstrip('.')}" if image_format else ".png"
    pairs = pair_outputs(inputs, out, suffix, files)
    check_output(json_path, force, inputs)
    originals = {src: ref for src in inputs if (ref := _original_for(src, original)) is not None}
    outputs = plan_outputs(pairs, force, protected=originals)
    formats: dict[Path, OutputFormat] = {}
    for src, dst in list(outputs.jobs):
        try:
            formats[dst] = output_format(None if is_stdout(dst) else dst, image_format)
        except CkbdError as exc:
            outputs.jobs.remove((src, dst))
            outputs.refused.append((src, str(exc)))
    run = RunPlan(CodecOptions(model, backend, threads, precision, device, coder_threads, max_memory),
                  Placement(jobs, server, concurrency, engine, address))

    def work(decoder: Any, src: Path, dst: Path) -> dict[str, Any]:
        stream = read_stream(src, decoder.max_pixels, check=decoder.check_header)
        ref = originals.get(src)
        reference = None if ref is None else _reference(ref, src, stream.header)
        image = decoder.decode(stream)  # the header read and checked above is not parsed again
        write_output(dst, image_bytes(image, formats[dst]), force)
        row: dict[str, Any] = {"bytes": stream.size, "bpp": bits_per_pixel(stream.size, *image.shape[:2])}
        if reference is not None:
            row["psnr"] = psnr(reference, image)
        return row

    report = run_batch(outputs.jobs, run.map(outputs.jobs, work, lambda open_codec: open_codec("decode")), "decode",
                       outputs.refused)
    for r in report.results:
        extra = f", {r['psnr']:.2f} dB" if "psnr" in r else ""
        typer.echo(f"{r['file']} -> {r['output']}{extra}", err=_to_stdout(pairs))
    finish(report, json_path)


def _to_stdout(pairs: list[tuple[Path, Path]]) -> bool:
    """When the data goes to stdout, everything else goes to stderr."""
    return any(is_stdout(dst) for _, dst in pairs)


def _read_input_image(src: Path, size_check: Callable[[int, int], None] | None = None) -> np.ndarray:
    """An image from a file, or from stdin for ``-`` (bounded: Pillow needs it all in memory)."""
    import sys

    from ckbd.runtime.imageio import MAX_STDIN_BYTES, read_image, read_image_bytes
    from ckbd.runtime.stream_io import STDIN_NAME, is_stdio, read_limited

    if is_stdio(src):
        return read_image_bytes(read_limited(sys.stdin.buffer, MAX_STDIN_BYTES), STDIN_NAME, check_size=size_check)
    return read_image(src, check_size=size_check)


def _budget_check(m: Any, budget: Any) -> Callable[[int, int], None]:
    """The encoder's memory plan for an image size (``m``: the model's manifest), run on each image's
    header before its pixels are decoded."""
    from ckbd.runtime.memory import plan_analysis

    def check(height: int, width: int) -> None:
        plan_analysis(m.arch, m.N, m.M, height, width, budget)

    return check


def _reference(ref: Path, src: Path, header: Any) -> np.ndarray:
    """The ``--original`` image, refused before decoding when its size is not the file's."""
    from ckbd.errors import UsageError
    from ckbd.runtime.imageio import read_image

    reference = read_image(ref, quiet=True)
    if reference.shape[:2] != (header.height, header.width):
        raise UsageError(f"--original {ref} is {reference.shape[1]}x{reference.shape[0]} but {src} holds a "
                         f"{header.width}x{header.height} image; give the image it was encoded from")
    return reference


def _original_for(src: Path, original: Path | None) -> Path | None:
    if original is None:
        return None
    if original.is_dir():
        matches = [p for p in original.iterdir() if p.stem == src.stem]
        return matches[0] if matches else None
    return original
