"""``ckbd bench serving``: decode throughput and latency, in-process vs a Triton server (the serve extra)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import typer


def serving_command(
    images: Path = typer.Option(None, "--images", help="Folder of PNG images (default: ../shared/data/kodak)."),
    count: int = typer.Option(24, "--count", min=1, help="Use the first N images."),
    json_path: Path = typer.Option(None, "--json", help="Also write the measurements here."),
    markdown: Path = typer.Option(None, "--markdown", help="Replace this benchmark's section in this file "
                                  "(docs/RESULTS.md)."),
) -> None:
    """Decode throughput and latency, in-process vs a Triton server (the serve extra).

    Decodes the same streams in-process and through Triton (whole and split, 1 and 2 instances), from 1
    and from 4 concurrent clients; every decoder runs ONNX Runtime on one thread.
    """
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.tools.bench.serving import markdown as render
    from ckbd.tools.bench.serving import replace_section, run

    check_writable(json_path, "--json")
    check_writable(markdown, "--markdown")
    folder = images if images is not None else default_kodak_dir()
    paths = sorted(folder.glob("*.png"))[:count]
    if not paths:
        raise CkbdError(f"no PNG images in {folder}")
    start_load = [round(x, 2) for x in os.getloadavg()]
    results = run(paths, on_row=typer.echo)
    load = (start_load, [round(x, 2) for x in os.getloadavg()])
    if json_path is not None:
        report = {"images": [p.name for p in paths], "load": load, "results": [asdict(m) for m in results]}
        atomic_write_bytes(json_path, json.dumps(report, indent=2).encode())
    if markdown is not None:
        replace_section(markdown, render(results, paths, load))
        typer.echo(f"wrote {markdown}")


def register(group: typer.Typer) -> None:
    group.command("serving")(serving_command)
