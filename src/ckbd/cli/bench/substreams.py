"""``ckbd bench substreams``: what cutting each pass into substreams costs on real images
(:mod:`ckbd.tools.bench.substreams`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.codec_options import ThreadsOption
from ckbd.cli.options import QuietOption


def substreams_command(
    images: list[Path] = typer.Argument(None, help="Images or folders (default: ../shared/data/kodak)."),
    model: Path | None = typer.Option(None, "--model", "-m",
                                      help="Exported model directory (default: the shipped model)."),
    size: str | None = typer.Option(None, "--size",
                                    help="Resize every image (bicubic) to HxW first, e.g. 1080x1920 or 4320x7680."),
    count: int | None = typer.Option(None, "--count", min=1, help="Only the first N images."),
    threads: int = ThreadsOption,
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
    quiet: bool = QuietOption,
) -> None:
    """Rate overhead of the substreams: each image encoded as the encoder does and with one substream per
    pass, the bytes the cuts add and the substreams chosen (anchors/non-anchors)."""
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.runtime.image_size import parse_size
    from ckbd.runtime.imageio import IMAGE_SUFFIXES
    from ckbd.tools.bench.substreams import format_table, measure_overhead
    from ckbd.tools.report.jsonfile import write_json
    from ckbd.tools.report.machine import machine_info

    check_writable(json_path, "--json")
    target = parse_size(size) if size else None
    paths = expand_inputs(images or [default_kodak_dir()], IMAGE_SUFFIXES)[:count]
    report = measure_overhead(paths, model, target, threads=threads, progress=not quiet)
    typer.echo(format_table(report))
    if json_path is not None:
        write_json(json_path, {**report.to_dict(), "size": size, "machine": machine_info()})
        typer.echo(f"wrote {json_path}")


def register(group: typer.Typer) -> None:
    group.command("substreams")(substreams_command)
