"""``ckbd check known-answers``: the integer stages' known-answer vectors on one backend and device."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.codec_options import BackendOption


def known_answers_command(
    model_dir: Path = typer.Argument(None, help="Exported model directory (default: the shipped model)."),
    backend: str = BackendOption,
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint for --backend torch (default: the "
                                    "shipped one for the shipped model)."),
) -> None:
    """Run the model's known-answer vectors through its three integer stages and compare every value.

    The runners are the backend's own (no CPU fallback). Prints per stage the cases, output
    elements, mismatches and the largest absolute difference. Exit 1 on any mismatch.
    """
    from ckbd.errors import CkbdError
    from ckbd.tools.check.known_answers import format_table, run_check

    report = run_check(model_dir, backend, device, checkpoint)
    typer.echo(format_table(report))
    if report.failed:
        raise CkbdError(f"known-answer check failed for {', '.join(report.failed)} on {backend} ({device})")


def register(group: typer.Typer) -> None:
    group.command("known-answers")(known_answers_command)
