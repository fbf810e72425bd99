"""``ckbd check tiling``: tiled against whole-image encodes and decodes on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def tiling_command(
    images: list[Path] = typer.Argument(None, help="Images or folders of images (default: the project's Kodak)."),
    model: Path = typer.Option(None, "--model", "-m", help="Exported model directory (default: the shipped model)."),
    analysis_core: int = typer.Option(256, "--analysis-core", min=64, help="Kept pixels per analysis tile side "
                                      "(a multiple of 64)."),
    synthesis_core: int = typer.Option(8, "--synthesis-core", min=2, help="Kept latent positions per synthesis "
                                       "tile side (even)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads."),
    json_path: Path = typer.Option(None, "--json", help="Also write the summary and every image's row here."),
) -> None:
    """Encode every image whole and with small analysis tiles, decode it whole and with small synthesis tiles
    (fixed plans, whatever the memory budget); report identical streams and the largest grey-level difference.
    Exit 1 when any stream differs."""
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.errors import CkbdError, UsageError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.imageio import IMAGE_SUFFIXES
    from ckbd.tools.check.tiling import check

    if analysis_core % 64 or synthesis_core % 2:
        raise UsageError("--analysis-core must be a multiple of 64 and --synthesis-core even")
    check_writable(json_path, "--json")
    paths = expand_inputs(images or [default_kodak_dir()], set(IMAGE_SUFFIXES))
    if not paths:
        raise UsageError("no images to check")
    summary = check(paths, analysis_core, synthesis_core, threads, model)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "images"}))
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(summary, indent=2).encode())
    if not summary["all_streams_identical"]:
        raise CkbdError("tiled and whole encodes gave different streams for some images")


def register(group: typer.Typer) -> None:
    group.command("tiling")(tiling_command)
