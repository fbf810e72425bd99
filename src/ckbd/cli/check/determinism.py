"""``ckbd check determinism``: decode CPU-encoded streams with every decoder configuration here."""

from __future__ import annotations

from pathlib import Path

import typer


def determinism_command(
    model_dir: Path = typer.Argument(..., help="Exported model directory."),
    images: list[Path] = typer.Argument(..., help="Images or folders of images."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint of the model: adds the torch backend "
                                    "(the shipped model's is found automatically)."),
    count: int = typer.Option(0, "--count", min=0, help="Use only the first N images (0: all)."),
    json_out: Path = typer.Option(None, "--json", help="Write the report as JSON."),
) -> None:
    """Decode CPU-encoded streams with every decoder configuration here and report mismatches.

    Encodes with ONNX Runtime defaults and decodes with each ORT optimisation level and thread count,
    torch, the FP16/INT8 synthesis variants and CUDA where present; reports per configuration images
    decoded and failed, index and mean flips, and the PSNR against the reference decode.

    Exit 1 when a configuration fails a decode or flips an index or mean on the integer path.
    """
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import check_writable
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.imageio import IMAGE_SUFFIXES, read_image
    from ckbd.runtime.package import known_checkpoint
    from ckbd.tools.check.determinism import format_table, report_json, run_check

    check_writable(json_out, "--json")
    checkpoint = checkpoint or known_checkpoint(model_dir)
    files = expand_inputs(images, set(IMAGE_SUFFIXES))[: count or None]
    report = run_check(model_dir, [read_image(p, quiet=True) for p in files], checkpoint)
    typer.echo(format_table(report))
    if json_out is not None:
        atomic_write_bytes(json_out, (report_json(report) + "\n").encode())
    if not report.passed:
        raise CkbdError(f"not exact on the {report.entropy_params} entropy-parameter path: "
                        f"{', '.join(report.inexact())}")


def register(group: typer.Typer) -> None:
    group.command("determinism")(determinism_command)
