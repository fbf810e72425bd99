"""``ckbd check roundtrip``: decoded latents equal the encoder's, and bytes vs the ideal code length."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ckbd.cli.codec_options import BackendOption, ModelOption


def roundtrip_command(
    images: Path = typer.Argument(None, help="Folder of images (default: the project's Kodak)."),
    model: Path = ModelOption,
    backend: str = BackendOption,
    json_path: Path = typer.Option(None, "--json", help="Also write the summary and every image's row here."),
) -> None:
    """Decoded latents equal the encoder's, bit for bit; file size vs the ideal code length.

    Encodes and decodes every image of the folder and compares all symbols and latent halves, and the
    file size (header included) with the ideal code length under the model's tables. Exit 1 when any
    image's latents differ.
    """
    from ckbd.cli.codec_options import open_codec
    from ckbd.cli.options import check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.tools.check.roundtrip import images_in, run_roundtrip

    check_writable(json_path, "--json")
    paths = images_in(images if images is not None else default_kodak_dir())
    encoder, decoder = open_codec(Encoder, model, backend), open_codec(Decoder, model, backend)
    report = run_roundtrip(encoder, decoder, paths)
    typer.echo(json.dumps(report.summary(), indent=2))
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(report.to_dict(), indent=2).encode())
    if not report.all_latents_identical:
        differ = [Path(r.file).name for r in report.files if not r.latents_identical]
        raise CkbdError(f"decoded latents differ from the encoder's for {len(differ)} of {len(report.files)} "
                        f"images: {', '.join(differ[:5])}")


def register(group: typer.Typer) -> None:
    group.command("roundtrip")(roundtrip_command)
