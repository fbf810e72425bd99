"""``ckbd study masks``: the paper's context-pattern study (Table 1, Figure 4) on a random-mask model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

study_app = typer.Typer(help="Studies of a trained model (context patterns).", no_args_is_help=True)

@study_app.command("masks")
def masks_command(
    checkpoint: Path = typer.Argument(..., help="An mbt2018-random-mask checkpoint (see `ckbd train --arch`)."),
    images: Path = typer.Option(None, "--images", help="Folder (or file) of images (default: ../shared/data/kodak)."),
    masks: list[str] = typer.Option(None, "--mask", help="Also evaluate this 5x5 pattern: 25 characters 0/1, "
                                                         "rows optionally split by '/', centre 0 (repeatable)."),
    json_path: Path = typer.Option(None, "--json", help="Write the study here."),
    plot: Path = typer.Option(None, "--plot", help="Draw the single-reference savings as a 5x5 heat map (Figure 4)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: default)."),
) -> None:
    """Rate saving of the Table 1 patterns, of the 24 single references and of any --mask.

    Saving = (bpp with no context - bpp with the mask) / bpp with no context, with the same
    latents for every mask; rates are ideal code lengths from the model's entropy model.
    """
    from ckbd.errors import require

    torch = require("torch", "export", "The mask study")
    from ckbd.models.checkpoint import load_model, read_checkpoint_file
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.imageio import find_images
    from ckbd.tools.mask_study import format_table, parse_mask, run_study, saving_grid

    for text in masks or []:
        parse_mask(text)  # reject a bad pattern before the slow part
    if threads:
        torch.set_num_threads(threads)
    from ckbd.data_paths import default_kodak_dir

    folder = images or default_kodak_dir()
    paths = [folder] if folder.is_file() else find_images(folder)
    model = load_model(checkpoint)
    training = read_checkpoint_file(checkpoint).get("training", {})
    summary = {k: training[k] for k in ("step", "elapsed_s", "config", "notes") if k in training}
    study = run_study(model, paths, custom=masks or [], checkpoint=str(checkpoint), training=summary)
    typer.echo(f"{len(paths)} images, PSNR {study.psnr:.2f} dB for every mask; {study.rate}\n")
    typer.echo(format_table(study))
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(study.to_dict(), indent=2) + "\n").encode())
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        from ckbd.tools.report.plots import saving_heatmap

        saving_heatmap(saving_grid(study), plot, "rate saving of each single reference (%)")
        typer.echo(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
