"""``ckbd ship``: make a training checkpoint the model that ships with ckbd (maintainers)."""

from __future__ import annotations

from pathlib import Path

import typer


def ship_command(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint to ship.", exists=True, dir_okay=False),
    calibration_images: Path = typer.Option(None, "--calibration-images",
                                            help="Photos that calibrate the integer entropy-parameter path "
                                                 "(default: ../shared/data/train)."),
    notes: str = typer.Option("", "--notes", help="Free text stored in RECIPE.json (data, machine, ...)."),
) -> None:
    """Rewrite the package's assets (src/ckbd/assets in a checkout): the float16 checkpoint, its integer-path export and RECIPE.json."""
    from ckbd.data_paths import default_train_dir
    from ckbd.export.package_default import package

    typer.echo(package(checkpoint, calibration_images or default_train_dir(), notes=notes))


def register(app: typer.Typer) -> None:
    app.command("ship")(ship_command)
