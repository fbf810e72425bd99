"""``ckbd export``: a checkpoint (ckbd or CompressAI) to a model directory of ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.errors import CkbdError, UsageError

#: Where the shipped default checkpoint lives inside the installed package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_checkpoint.pt"


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def _parse_stages(values: list[str] | None) -> tuple[str, ...] | None:
    """``--stages a,b --stages c`` -> (a, b, c); None means all stages."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(names) or None


def _resolve_checkpoint(checkpoint: Path | None, use_default: bool) -> Path:
    if use_default and checkpoint is not None:
        raise CkbdError("give either a CHECKPOINT or --default, not both")
    if use_default:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CkbdError(
                f"the default checkpoint is not installed ({DEFAULT_CHECKPOINT} is missing); "
                "pass a CHECKPOINT to export"
            )
        return DEFAULT_CHECKPOINT
    if checkpoint is None:
        raise CkbdError("give a CHECKPOINT to export, or --default for the shipped model")
    return checkpoint


def _integer_params(model: object, shipped: bool, images: Path | None, activation_bits: int) -> object:
    """The integer spec: the shipped model's own (so --default reproduces it), or calibrated anew."""
    from ckbd.export.integer_quantize import QuantConfig, calibration_images, quantize_model
    from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams

    if shipped:
        return IntegerParams.load(DEFAULT_CHECKPOINT.parent / "default" / INTEGER_PARAMS_NAME)
    if images is None:
        from ckbd.data_paths import SHARED_DATA

        images = SHARED_DATA / "train"
        if not images.is_dir():
            raise UsageError("the integer entropy-parameter path needs calibration photos: pass "
                             "--calibration-images DIR (or export with --entropy-params float)")
    photos = calibration_images(images)
    return quantize_model(model, photos, _scale_table(), QuantConfig(activation_bits=activation_bits))  # type: ignore[arg-type]


def _scale_table() -> object:
    from ckbd.runtime.entropy_tables import default_scale_table

    return default_scale_table()


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
    if entropy_params not in ("integer", "float"):
        raise UsageError(f"--entropy-params must be integer or float, got {entropy_params!r}")
    if not 4 <= activation_bits <= 12:
        raise UsageError(f"--activation-bits must be between 4 and 12, got {activation_bits}")
    from ckbd.export.onnx_export import export_model
    from ckbd.export.stage_modules import require_checkerboard
    from ckbd.models.checkpoint import load_model
    from ckbd.runtime.stages import ALL_STAGES

    path = _resolve_checkpoint(checkpoint, use_default)
    model = require_checkerboard(load_model(path))  # an unexportable model is refused before calibrating
    spec = answers = None
    if entropy_params == "integer":
        from ckbd.export.known_answers import for_export

        shipped = use_default and calibration_images is None
        spec = _integer_params(model, shipped, calibration_images, activation_bits)
        answers = for_export(model, spec, calibration_images, shipped)  # type: ignore[arg-type]
    manifest = export_model(model, out, opset=opset, stages=_parse_stages(stages) or ALL_STAGES,
                            optimize=optimize, fp16=fp16, integer_params=spec, known_answers=answers)  # type: ignore[arg-type]
    typer.echo(f"{out}: {manifest.arch} N={manifest.N} M={manifest.M} anchors={manifest.anchor_parity} "
               f"opset={manifest.opset} entropy-params={manifest.entropy_params} "
               f"fingerprint={manifest.fingerprint[:16]}")
    width = max(len(entry.file) for entry in manifest.graphs.values())
    typer.echo(f"  {'file':<{width}}  {'size':>10}  sha256")
    for entry in manifest.graphs.values():
        size = _format_size((Path(out) / entry.file).stat().st_size)
        typer.echo(f"  {entry.file:<{width}}  {size:>10}  {entry.sha256[:16]}")
