"""``ckbd info``: what a .ckbd file holds, without decoding it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)


def info_command(
    file: Path = typer.Argument(..., help="A .ckbd file, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the same summary as JSON."),
) -> None:
    """Summarize a .ckbd file without decoding it: format, model, image size, rate, payload sizes."""
    from ckbd.cli.info_format import format_text, summarize
    from ckbd.runtime.stream_io import read_stream
    from ckbd.tools.report.jsonfile import dumps

    # Header first; the payloads are only counted (a file's size, stdin in chunks), never held.
    stream = read_stream(file, max_pixels=None, payloads=False)
    summary = summarize(stream.header, stream.size, str(file))
    typer.echo(dumps(summary).rstrip("\n") if as_json else format_text(summary))
