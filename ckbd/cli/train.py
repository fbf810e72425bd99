"""``ckbd train``: rate-distortion training with resumable checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.options import default_train_dir


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    arch: str = typer.Option("mbt2018-ckbd", help="mbt2018-ckbd, cheng2020-ckbd, mbt2018 (serial), mbt2018-mean"),
    lmbda: float = typer.Option(0.013, "--lambda", help="Rate-distortion trade-off λ in λ·255²·MSE + bpp."),
    data: Path = typer.Option(None, help="Folder of training photos (default: ../shared/data/train when present)."),
    steps: int = typer.Option(1000, help="Total steps (a resumed run continues up to this count)."),
    batch: int = typer.Option(8, help="Crops per step."),
    crop: int = typer.Option(192, help="Crop side in pixels."),
    N: int = typer.Option(64, "--N", help="Transform channels."),
    M: int = typer.Option(96, "--M", help="Latent channels (cheng2020-ckbd uses M = N)."),
    lr: float | None = typer.Option(
        None, help="Learning rate of the main optimiser (default 1e-4; a resumed run keeps its own unless set)."),
    ste_from: float = typer.Option(0.8, help="Fraction of steps after which synthesis sees rounded latents."),
    checkpoint_every: int = typer.Option(200, help="Checkpoint interval in steps."),
    threads: int = typer.Option(0, help="torch CPU threads (0: default)."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("checkpoint.pt"), "--out", "-o", help="Checkpoint to write."),
    resume: bool = typer.Option(False, help="Continue from --out if it exists."),
) -> None:
    """Train a model on random crops from a folder of images (CPU here, CUDA where present)."""
    from ckbd.training import TrainConfig, train

    if arch == "cheng2020-ckbd":
        M = N
    config = TrainConfig(arch=arch, N=N, M=M, lmbda=lmbda, steps=steps, batch=batch, crop=crop, lr=lr,
                         ste_from=ste_from, checkpoint_every=checkpoint_every, seed=seed, threads=threads,
                         device=device)
    trainer = train(config, data or default_train_dir(), out, resume=resume)
    typer.echo(f"{out}: {trainer.step} steps, {trainer.elapsed_s / 60:.1f} min of training")
