"""``ckbd info``: what a .ckbd file holds, without decoding it."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)


def info_command(
    file: Path = typer.Argument(..., help="A .ckbd file."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
) -> None:
    """Show a bitstream's header: model, sizes, payload bytes."""
    from ckbd.errors import CkbdError
    from ckbd.runtime import bitstream as bs

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CkbdError(f"cannot read {file}: {exc.strerror}") from None
    stream = bs.unpack(data, max_pixels=2**62)
    h = stream.header
    fields = {
        "file": str(file), "bytes": len(data), "format_version": h.version, "arch": h.arch,
        "fingerprint": h.fingerprint_hex, "height": h.height, "width": h.width,
        "bpp": 8 * len(data) / (h.height * h.width), "N": h.N, "M": h.M,
        "y_shape": [h.M, h.y_h, h.y_w], "z_shape": [h.N, h.z_h, h.z_w],
        "payload_bytes": {"z": h.z_length, "anchors": h.anchor_length, "nonanchors": h.nonanchor_length},
        "header_bytes": bs.HEADER_SIZE, "symbols_crc32": f"{h.symbols_crc:08x}",
    }
    if as_json:
        typer.echo(json.dumps(fields, indent=2))
        return
    for key, value in fields.items():
        typer.echo(f"{key:>15}: {value}")
