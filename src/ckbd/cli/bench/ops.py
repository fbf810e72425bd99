"""``ckbd bench ops``: op-by-op ONNX Runtime profile of the image stages, and GFLOP/s against the peak.

The measurement is :mod:`ckbd.tools.bench.ops`; heavy imports stay in the command body.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

SECTION_BEGIN = "<!-- op_profile: begin -->"
SECTION_END = "<!-- op_profile: end -->"


def _split(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"{option}: choose from {', '.join(allowed)}")
    return items


def ops_command(
    models: list[Path] = typer.Option(..., "--model", "-m", help="Model directory (repeatable: before/after)."),
    image: Path = typer.Option(None, "--image", help="Image to profile at (default: the first Kodak image)."),
    stages: str = typer.Option("latent_synthesis,analysis", "--stages", help="Comma-separated image stages."),
    precisions: str = typer.Option("fp32,int8", "--precision", help="Comma-separated: fp32, fp16, int8 "
                                                                     "(variants a model lacks are skipped)."),
    threads: int = typer.Option(2, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    runs: int = typer.Option(5, "--runs", "-r", min=1, help="Timed runs (medians), and as many profiled ones."),
    json_path: Path = typer.Option(None, "--json", help="Also write every measurement here."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the tables as a section of this file "
                                                           "(e.g. docs/RESULTS.md; replaced on re-runs)."),
) -> None:
    """Where the time of latent synthesis and analysis goes, op type by op type, and how far from peak."""
    from dataclasses import asdict

    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.runtime.imageio import find_images
    from ckbd.runtime.stages import ANALYSIS, LATENT_SYNTHESIS
    from ckbd.tools.bench.ops import bench_ops, render_markdown
    from ckbd.tools.report.jsonfile import write_json

    stage_list = _split(stages, (LATENT_SYNTHESIS, ANALYSIS), "--stages")
    precision_list = _split(precisions, ("fp32", "fp16", "int8"), "--precision")
    check_writable(json_path, "--json")
    check_writable(markdown, "--markdown")
    image_path = image if image is not None else find_images(default_kodak_dir(), 1, what="image")[0]
    result = bench_ops(list(models), precision_list, stage_list, image_path, threads, runs)
    command = "ckbd bench " + shlex.join(sys.argv[sys.argv.index("ops"):]) if "ops" in sys.argv else "ckbd bench ops"
    text = render_markdown(result, command)
    typer.echo(text)
    if json_path is not None:
        write_json(json_path, asdict(result))
        typer.echo(f"wrote {json_path}")
    if markdown is not None:
        from ckbd.tools.report.results_sections import write_section

        section = "\n".join([SECTION_BEGIN, "", "### Op-level profile of the image stages (`ckbd bench ops`)", "",
                             text, SECTION_END]) + "\n"
        write_section(markdown, section, SECTION_BEGIN, SECTION_END)
        typer.echo(f"wrote the op_profile section of {markdown}")


def register(group: typer.Typer) -> None:
    group.command("ops")(ops_command)
