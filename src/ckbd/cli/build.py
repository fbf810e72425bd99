"""``ckbd build``: compile a model directory's stage graphs into TensorRT engines.

Parsing and validation happen before TensorRT is imported, so a mistyped size or a wrong folder
is reported even on a machine without the ``gpu`` extra.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

# Light: sizes and policy only; tensorrt is imported when a build starts.
from ckbd.engines.profiles import DEFAULT_PROFILE


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def build(
    model_dir: Path = typer.Argument(
        ..., metavar="DIR", help="Model directory (with manifest.json) to build engines for."
    ),
    precision: Precision = typer.Option(
        Precision.fp32,
        "--precision",
        help="Precision of latent synthesis; fp16/int8 need the matching ONNX variant in the "
        "manifest. The index-deciding stages stay fp32 (see --force-precision).",
    ),
    min_size: str = typer.Option(
        str(DEFAULT_PROFILE.min),
        "--min-size",
        metavar="HxW",
        help="Smallest image the engines accept.",
    ),
    opt_size: str = typer.Option(
        str(DEFAULT_PROFILE.opt),
        "--opt-size",
        metavar="HxW",
        help="Image size the engines are tuned for.",
    ),
    max_size: str = typer.Option(
        str(DEFAULT_PROFILE.max),
        "--max-size",
        metavar="HxW",
        help="Largest image the engines accept.",
    ),
    workspace: int | None = typer.Option(
        None,
        "--workspace",
        min=1,
        help="Builder workspace memory limit in MB (default: TensorRT's).",
    ),
    timing_cache: Path | None = typer.Option(
        None,
        "--timing-cache",
        help="Timing cache file, loaded if present and saved after the build "
        "(default: DIR/engines/timing.cache).",
    ),
    force_precision: bool = typer.Option(
        False,
        "--force-precision",
        help="Build every stage at --precision, including those that decide scale indexes; "
        "bitstreams then only decode reliably with these very engines.",
    ),
    rebuild_shared: bool = typer.Option(
        False,
        "--rebuild-shared",
        help="Also rebuild the fp32 engines every precision set shares when they still fit "
        "(float-path streams encoded with the old ones may then no longer decode).",
    ),
    device: int = typer.Option(0, "--device", min=0, help="CUDA device index."),
) -> None:
    """Build one TensorRT engine per stage graph into DIR/engines/ (sizes are padded to 64)."""
    from ckbd.engines.builder import BuildOptions, build_engines
    from ckbd.engines.profiles import SizeProfile
    from ckbd.errors import CkbdError, UsageError

    try:
        profile = SizeProfile.parse(min_size, opt_size, max_size)
    except CkbdError as exc:  # a mistyped size is a usage error (exit 2), found before TensorRT loads
        raise UsageError(str(exc)) from None
    options = BuildOptions(
        precision=precision.value,
        profile=profile,
        workspace_mb=workspace,
        timing_cache=timing_cache,
        force_precision=force_precision,
        rebuild_shared=rebuild_shared,
        device=device,
    )
    results = build_engines(model_dir, options, progress=lambda line: typer.echo(line, err=True))
    for result in results:
        typer.echo(str(result.engine))


def register(app: typer.Typer) -> None:
    app.command("build", no_args_is_help=True)(build)
