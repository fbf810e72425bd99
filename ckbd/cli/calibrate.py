"""``ckbd calibrate``: INT8 Q/DQ variants of a model directory's image graphs, from real images.

The result is used with ``ckbd decode --precision int8 --model DIR`` (and, for an ``analysis``
variant, by an encoder opened with ``precision="int8"``). Heavy imports stay in the command body.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.codec_options import ThreadsOption
from ckbd.cli.options import QuietOption


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)


def calibrate_command(
    model_dir: Path = typer.Argument(..., help="Exported model directory; the int8 graphs are written into it."),
    images: Path = typer.Option(None, "--images", "-i",
                                help="Folder of calibration images, searched recursively "
                                     "(default: ../shared/data/train; avoid the evaluation set)."),
    method: str = typer.Option("entropy", "--method", help="Activation range calibration: minmax, entropy or percentile."),
    count: int = typer.Option(24, "--count", "-n", min=1, help="Number of images (the first N, sorted)."),
    stages: str = typer.Option("latent_synthesis", "--stages",
                               help="Comma-separated: latent_synthesis (decoder) and/or analysis (encoder)."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor",
                                     help="Weight scales per output channel (default) or one per tensor."),
    quantize_gdn: bool = typer.Option(False, "--quantize-gdn/--float-gdn",
                                      help="Also quantise the GDN/IGDN norm convolutions (default: keep them float)."),
    reduce_range: bool = typer.Option(False, "--reduce-range/--full-range",
                                      help="7-bit weights: for x86 CPUs without VNNI, whose int8 kernels can saturate."),
    threads: int = ThreadsOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per stage."),
    quiet: bool = QuietOption,
) -> None:
    """Calibrate INT8 (Q/DQ, symmetric, TensorRT-compatible) variants of the synthesis/analysis graphs."""
    from ckbd.calibration import calibrate, check_stages
    from ckbd.cli.options import default_train_dir

    stage_list = check_stages(stages)  # refuse parameter graphs before any image is read
    folder = images if images is not None else default_train_dir()
    manifest = calibrate(model_dir, folder, method=method, count=count, stages=stage_list,
                         per_channel=per_channel, threads=threads, progress=progress and not quiet, quantize_gdn=quantize_gdn,
                         reduce_range=reduce_range)
    for stage in stage_list:
        entry = manifest.variants["int8"][stage]
        typer.echo(f"{stage}: wrote {model_dir / entry.file} (sha256 {entry.sha256[:16]}...)")
    typer.echo(f"use it with: ckbd decode --precision int8 --model {model_dir} ...")
