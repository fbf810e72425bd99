"""``ckbd bench int8``: INT8 against FP32 decoding, same streams, on ONNX Runtime's CPU provider.

The measurement is :mod:`ckbd.tools.bench.int8`; heavy imports stay in the command body.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def int8_command(
    model_dirs: list[Path] = typer.Argument(..., help="Model directories with an int8 variant (ckbd calibrate)."),
    images: Path = typer.Option(None, "--images", help="Image folder (default: ../shared/data/kodak)."),
    count: int = typer.Option(None, "--count", "-n", min=1, help="Only the first N images (sorted)."),
    threads: int = typer.Option(2, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="Timed decodes per image and precision."),
    json_path: Path = typer.Option(None, "--json", help="Also write every measurement here."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the summary as a section of this file "
                                                           "(e.g. docs/RESULTS.md; replaced on re-runs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Decode the same streams with fp32 and int8 synthesis: PSNR change and synthesis speed-up."""
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.runtime.imageio import find_images
    from ckbd.tools.bench.int8 import SECTION_BEGIN, SECTION_END, format_report, render_markdown, run_report
    from ckbd.tools.report.jsonfile import write_json

    check_writable(json_path, "--json")
    check_writable(markdown, "--markdown")
    files = find_images(images if images is not None else default_kodak_dir(), count, what="image")
    reports = []
    for model_dir in model_dirs:
        report = run_report(model_dir, files, threads, repeats, progress)
        typer.echo(f"== {model_dir}")
        typer.echo(format_report(report))
        reports.append(report)
    if json_path is not None:
        payload = [r.to_dict() for r in reports]
        write_json(json_path, payload[0] if len(payload) == 1 else payload)  # infinite PSNR -> null
        typer.echo(f"wrote {json_path}")
    if markdown is not None:
        from ckbd.tools.report.results_sections import write_section

        command = "ckbd bench " + shlex.join(sys.argv[sys.argv.index("int8"):]) if "int8" in sys.argv else "ckbd bench int8"
        write_section(markdown, render_markdown(reports, command), SECTION_BEGIN, SECTION_END)
        typer.echo(f"wrote the int8 section of {markdown}")


def register(group: typer.Typer) -> None:
    group.command("int8")(int8_command)
