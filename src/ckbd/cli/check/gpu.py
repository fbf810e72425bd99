"""``ckbd check gpu``: what a GPU host runs, end to end, into one JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _sizes(value: str) -> str:
    from ckbd.tools.check.gpu.latency import Size

    try:
        [Size.parse(s) for s in value.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _precisions(value: str) -> str:
    from ckbd.cli.codec_options import TORCH_PRECISIONS

    bad = [p for p in value.split(",") if p not in TORCH_PRECISIONS]
    if bad or not value:
        raise typer.BadParameter(f"'{value}': a comma-separated list of {', '.join(TORCH_PRECISIONS)}")
    return value


def _paper(value: str) -> str:
    n, sep, m = value.partition(",")
    if value != "none" and not (sep and n.isdigit() and m.isdigit() and int(n) > 0 and int(m) > 0):
        raise typer.BadParameter(f"'{value}' is not N,M (e.g. 192,320) or none")
    return value


def gpu_command(
    model_dir: Path = typer.Argument(None, help="Exported model directory (default: the shipped model)."),
    images: Path = typer.Option(None, "--images", help="Folder of test images (default: ../shared/data/kodak "
                                "when present, else the checkout's tests/data)."),
    json_path: Path = typer.Option(Path("gpu_check.json"), "--json", help="Report file."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Checkpoint the model was exported from, which "
                                    "torch runs (default: the shipped one for the shipped model)."),
    device: str = typer.Option("cuda", "--device", help="cuda, cuda:N or cpu: where torch runs."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use at most this many images."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed decodes per stream."),
    budget_s: float = typer.Option(360.0, "--budget-s", min=0, help="Time budget of the whole check, seconds: "
                                   "each part stops at its share and the parts left are skipped."),
    sizes: str = typer.Option("768x512,1920x1080", "--sizes", callback=_sizes,
                              help="Image sizes WxH of the latency rows, comma-separated."),
    precisions: str = typer.Option("fp32,fp16", "--precisions", callback=_precisions,
                                   help="Synthesis precisions of the latency rows (fp32, fp16, bf16)."),
    paper_size: str = typer.Option("192,320", "--paper-size", callback=_paper,
                                   help="N,M of the random-weight paper-size model built on the spot, or none."),
    no_build: bool = typer.Option(False, "--no-build", help="Use the TensorRT engines already built."),
    include_cpu: bool = typer.Option(False, "--include-cpu", help="Run everything on the CPU instead of --device "
                                     "and add the CPU backends (a dry run without a GPU)."),
) -> None:
    """Known answers, CPU<->GPU streams, per-stage latency, CompressAI ratio, throughput, all GPU backends.

    Encodes the images with ONNX Runtime on the CPU and decodes them with torch on the device, and
    the reverse (identical symbols required); scores the known-answer vectors on every backend and
    device; times each decode stage with CUDA events for the shipped model and a random-weight
    paper-size model at each size and precision; compares with CompressAI's checkerboard decode
    when CompressAI is installed; measures images/s one by one and pipelined; and decodes on every
    GPU backend present (TensorRT, ONNX Runtime CUDA). Each part runs within its share of
    --budget-s and is skipped, with the reason in the report, when it cannot run.

    Exit 1 when the device is not there (one line, nothing written) or a part failed (the report
    is written either way).
    """
    from ckbd.cli.options import check_writable
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.tools.check.gpu.latency import Size
    from ckbd.tools.check.gpu.render import render
    from ckbd.tools.check.gpu.run import GpuCheckConfig, run_check

    check_writable(json_path, "--json")
    n, _, m = paper_size.partition(",")
    config = GpuCheckConfig(
        model_dir, images, checkpoint, device, limit, repeat, budget_s, no_build, include_cpu,
        tuple(Size.parse(s) for s in sizes.split(",")), tuple(precisions.split(",")),
        None if paper_size == "none" else (int(n), int(m)))
    report = run_check(config, log=typer.echo).to_dict()
    typer.echo("\n" + render(report))
    atomic_write_bytes(json_path, json.dumps(report, indent=2, sort_keys=True).encode())
    if not report["ok"]:
        raise CkbdError(f"GPU check {report['failure']}; report written to {json_path}")
    typer.echo(f"\nall checks passed; report written to {json_path}")


def register(group: typer.Typer) -> None:
    group.command("gpu")(gpu_command)
