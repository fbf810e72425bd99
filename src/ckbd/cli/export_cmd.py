"""``ckbd export``: a checkpoint (ckbd or CompressAI) to a model directory of ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def _parse_stages(values: list[str] | None) -> tuple[str, ...] | None:
    """``--stages a,b --stages c`` -> (a, b, c); None means all stages."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(names) or None


def _format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def export_command(
    checkpoint: Path = typer.Argument(None, help="ckbd or CompressAI checkpoint (.pt/.pth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (created if needed)."),
    use_default: bool = typer.Option(False, "--default", help="Export the shipped default checkpoint."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    stages: list[str] = typer.Option(
        None, "--stages",
        help="Stages to export, comma-separated or repeated (default: all five).",
    ),
    optimize: bool = typer.Option(
        True, "--optimize/--no-optimize",
        help="Export the rewritten, faster graphs (default) or the plain model computation.",
    ),
    fp16: bool = typer.Option(False, "--fp16", help="Also write a float16 latent synthesis (for TensorRT FP16)."),
    entropy_params: str = typer.Option(
        "integer", "--entropy-params",
        help="integer (exact on every backend: portable bitstreams) or float (decodes only where the "
             "encoder's float results repeat).",
    ),
    calibration_images: Path = typer.Option(
        None, "--calibration-images",
        help="Photos to calibrate the integer path on (default: ../shared/data/train; with --default, "
             "the shipped model's calibration is reused).",
    ),
    activation_bits: int = typer.Option(8, "--activation-bits", help="Integer path: activation bits (4-12)."),
) -> None:
    """Export the five stage graphs, entropy tables and manifest of a checkerboard model."""
    from ckbd.export.checkpoint_export import ExportOptions, export_checkpoint
    from ckbd.runtime.stages import ALL_STAGES

    options = ExportOptions(opset=opset, stages=_parse_stages(stages) or ALL_STAGES, optimize=optimize, fp16=fp16,
                            entropy_params=entropy_params, calibration_images=calibration_images,
                            activation_bits=activation_bits)
    manifest = export_checkpoint(checkpoint, out, options, use_default=use_default)
    typer.echo(f"{out}: {manifest.arch} N={manifest.N} M={manifest.M} anchors={manifest.anchor_parity} "
               f"opset={manifest.opset} entropy-params={manifest.entropy_params} "
               f"fingerprint={manifest.fingerprint[:16]}")
    width = max(len(entry.file) for entry in manifest.graphs.values())
    typer.echo(f"  {'file':<{width}}  {'size':>10}  sha256")
    for entry in manifest.graphs.values():
        size = _format_size((Path(out) / entry.file).stat().st_size)
        typer.echo(f"  {entry.file:<{width}}  {size:>10}  {entry.sha256[:16]}")
