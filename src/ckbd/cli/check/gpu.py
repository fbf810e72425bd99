"""``ckbd check gpu``: every GPU backend present decodes CPU-encoded streams; one table and one JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def gpu_command(
    model_dir: Path = typer.Argument(None, help="Exported model directory (default: the shipped model)."),
    images: Path = typer.Option(None, "--images", help="Folder of test images (default: the checkout's "
                                "tests/data)."),
    json_path: Path = typer.Option(Path("gpu_check.json"), "--json", help="Report file."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint for torch on CUDA "
                                    "(default: the shipped one for the shipped model)."),
    device: int = typer.Option(0, "--device", min=0, help="CUDA device index."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use at most this many images."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Decodes per stream (for timing)."),
    budget_s: float = typer.Option(420.0, "--budget-s", min=0, help="Time budget of the whole check, seconds."),
    no_build: bool = typer.Option(False, "--no-build", help="Use the engines already built."),
    include_cpu: bool = typer.Option(False, "--include-cpu", help="Also check the CPU backends (a dry run "
                                     "without a GPU)."),
) -> None:
    """Every GPU backend present decodes CPU-encoded streams; flips, PSNR and latency per backend.

    Encodes on the CPU, builds the TensorRT engines where TensorRT is installed, decodes on every GPU
    backend present (TensorRT per precision, ONNX Runtime CUDA, torch on CUDA) and reports flips per
    index stage, PSNR, median latency per stage and each stage's executor.

    Exit 1 when a backend fails to open or decode (or, on the integer path, flips an index), or when no GPU
    backend was found. Writes the JSON report either way.
    """
    from ckbd.cli.options import check_writable
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.tools.gpu_check import CHECKOUT_IMAGES, GpuCheckConfig, render, run_check

    check_writable(json_path, "--json")
    config = GpuCheckConfig(model_dir, images or CHECKOUT_IMAGES, checkpoint, device, limit, repeat, budget_s, no_build, include_cpu)
    report = run_check(config, log=typer.echo)
    typer.echo("\n" + render(report))
    atomic_write_bytes(json_path, json.dumps(report.to_dict(), indent=2, sort_keys=True).encode())
    if not report.ok:
        raise CkbdError(f"GPU check failed: {report.failure()}; report written to {json_path}")
    typer.echo(f"\nall checks passed; report written to {json_path}")


def register(group: typer.Typer) -> None:
    group.command("gpu")(gpu_command)
