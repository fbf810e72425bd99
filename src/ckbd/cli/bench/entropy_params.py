"""``ckbd bench entropy-params``: the integer entropy-parameter stages against the float ones, same weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _size(text: str) -> tuple[int, int]:
    from ckbd.runtime.image_size import parse_size

    size = parse_size(text)
    return size.height, size.width


def entropy_params_command(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Model to measure (default: random weights)."),
    N: int = typer.Option(192, "--N", min=1, help="N of the random model."),
    M: int = typer.Option(320, "--M", min=1, help="M of the random model."),
    size: str = typer.Option("512x768", "--size", help="Padded image size HxW."),
    threads: int = typer.Option(2, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    repeats: int = typer.Option(7, "--repeats", min=1, help="Timed runs per stage; medians are reported."),
    calibration: Path = typer.Option(None, "--calibration",
                                     help="Photos to calibrate the integer path on (default: ../shared/data/train)."),
    images: Path = typer.Option(None, "--images", help="Also compare coded sizes on these images."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Integer vs float entropy-parameter stages of one model: speed (and coded size).

    Exports the model with float and with integer entropy parameters and times hyper_synthesis,
    anchor_params and nonanchor_params of both on ONNX Runtime (CPU), runs interleaved.
    """
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_train_dir
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.imageio import IMAGE_SUFFIXES, read_image
    from ckbd.tools.bench.entropy_params import format_table, run

    h, w = _size(size)
    check_writable(json_out, "--json")
    photos = [read_image(p, quiet=True) for p in expand_inputs([images], set(IMAGE_SUFFIXES))] if images else []
    result = run(checkpoint, N, M, (h, w), threads, repeats, calibration or default_train_dir(), photos)
    typer.echo(format_table(result))
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
        typer.echo(f"wrote {json_out}")


def register(group: typer.Typer) -> None:
    group.command("entropy-params")(entropy_params_command)
