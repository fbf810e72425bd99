"""``ckbd train``: rate-distortion training with resumable checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.options import QuietOption, check_input_dir, check_writable
from ckbd.data_paths import default_train_dir
from ckbd.errors import OutputExistsError


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    arch: str | None = typer.Option(
        None, help="mbt2018-ckbd (default), cheng2020-ckbd, mbt2018 (serial), mbt2018-mean, mbt2018-random-mask; "
                   "a resumed run takes the checkpoint's and refuses another."),
    lmbda: float = typer.Option(0.013, "--lambda", help="Rate-distortion trade-off λ in λ·255²·MSE + bpp."),
    data: Path = typer.Option(None, help="Folder of training photos, searched recursively "
                                         "(default: the project's ../shared/data/train)."),
    steps: int = typer.Option(100_000, help="Total steps (a resumed run continues up to this count)."),
    batch: int = typer.Option(8, help="Crops per step."),
    crop: int = typer.Option(128, help="Crop side in pixels, a multiple of 64."),
    N: int | None = typer.Option(None, "--N", help="Transform channels (default 64; resumed: the checkpoint's)."),
    M: int | None = typer.Option(None, "--M", help="Latent channels (default 96, cheng2020-ckbd: N; resumed: "
                                                   "the checkpoint's)."),
    lr: float | None = typer.Option(
        None, help="Learning rate of the main optimiser (default 2e-4; a resumed run keeps its own unless set)."),
    ste_from: float = typer.Option(0.05, help="Fraction of --steps after which synthesis sees rounded latents."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint interval in steps."),
    threads: int = typer.Option(0, help="torch CPU threads (0: default)."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, mps."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("checkpoint.pt"), "--out", "-o", help="Checkpoint to write."),
    resume: bool = typer.Option(False, help="Continue from --out if it exists."),
    force: bool = typer.Option(False, "--force", "-f", help="Start a new run over an existing --out."),
    init_from: Path | None = typer.Option(
        None, help="Start a new run from this ckbd checkpoint's weights where name and shape match."),
    quiet: bool = QuietOption,
) -> None:
    """Train a model on random crops from a folder of images (CPU here, CUDA where present).

    The defaults are the shipped model's recipe (ckbd/assets/RECIPE.json). Ctrl-C or SIGTERM
    saves the checkpoint after the step in progress; --resume continues from there.
    """
    from dataclasses import fields

    from ckbd.models.config import M_EQUALS_N
    from ckbd.training import TrainConfig, train

    given = {k: v for k, v in (("arch", arch), ("N", N), ("M", M)) if v is not None}
    default = {f.name: f.default for f in fields(TrainConfig)}
    arch = default["arch"] if arch is None else arch
    N = default["N"] if N is None else N
    M = (N if arch in M_EQUALS_N else default["M"]) if M is None else M
    config = TrainConfig(arch=arch, N=N, M=M, lmbda=lmbda, steps=steps, batch=batch, crop=crop, lr=lr,
                         ste_from=ste_from, checkpoint_every=checkpoint_every, seed=seed, threads=threads,
                         device=device, init_from=str(init_from) if init_from else None)
    check_input_dir(data, "--data")
    check_writable(out, "--out")
    if out.exists() and not (resume or force):
        raise OutputExistsError(f"{out} already exists; continue it with --resume or start over with --force")
    trainer = train(config, data or default_train_dir(), out, resume=resume, progress=not quiet, expect=given)
    typer.echo(f"{out}: {trainer.step} steps, {trainer.elapsed_s / 60:.1f} min of training")
