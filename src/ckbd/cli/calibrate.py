"""``ckbd calibrate``: INT8 Q/DQ variants of a model directory's image graphs, from real images.

The result is used with ``ckbd decode --precision int8 --model DIR`` (and, for an ``analysis``
variant, by an encoder opened with ``precision="int8"``). Heavy imports stay in the command body.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.calibration.fine_tune import FineTuneConfig
from ckbd.calibration.quantize import DEFAULT_COUNT, DEFAULT_METHOD
from ckbd.calibration.targets import DEFAULT_TARGET
from ckbd.cli.codec_options import ThreadsOption
from ckbd.cli.options import QuietOption
from ckbd.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)


def calibrate_command(
    model_dir: Path = typer.Argument(..., help="Exported model directory; the int8 graphs are written into it."),
    images: Path = typer.Option(None, "--images", "-i",
                                help="Folder of calibration images, searched recursively "
                                     "(default: ../shared/data/train; avoid the evaluation set)."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help="Activation range calibration: minmax, entropy or percentile."),
    count: int = typer.Option(DEFAULT_COUNT, "--count", "-n", min=1, help="Number of images (the first N, sorted)."),
    stages: str = typer.Option("latent_synthesis", "--stages",
                               help="Comma-separated: latent_synthesis (decoder) and/or analysis (encoder)."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor",
                                     help="Weight scales per output channel (default) or one per tensor."),
    quantize_gdn: bool = typer.Option(False, "--quantize-gdn/--float-gdn",
                                      help="Also quantise the GDN/IGDN norm convolutions (default: keep them float)."),
    reduce_range: bool = typer.Option(False, "--reduce-range/--full-range",
                                      help="7-bit weights: for x86 CPUs without VNNI, whose int8 kernels can saturate."),
    target: str = typer.Option(DEFAULT_TARGET, "--target",
                               help="tensorrt: symmetric int8 (TensorRT); cpu: asymmetric uint8 activations and "
                                    "int32 biases, the form ONNX Runtime's x86 int8 kernels fuse."),
    max_loss_db: float = typer.Option(None, "--max-loss-db", min=0.0,
                                      help="Keep the most sensitive synthesis layers float until the PSNR loss on the "
                                           "calibration images is at most this many dB (e.g. 0.1)."),
    fine_tune_steps: int = typer.Option(0, "--fine-tune-steps", min=0,
                                        help="First fine-tune latent synthesis this many steps with the int8 "
                                             "rounding in the loop, then calibrate it (0: no fine-tune; needs torch)."),
    fine_tune_lr: float = typer.Option(FineTuneConfig.lr, "--fine-tune-lr", min=0.0, help="Fine-tune learning rate (Adam)."),
    checkpoint: Path = typer.Option(None, "--checkpoint",
                                    help="The checkpoint MODEL_DIR was exported from, for --fine-tune-steps "
                                         "(default: the shipped one, for the shipped model)."),
    equalize: bool = typer.Option(True, "--equalize/--no-equalize",
                                  help="First rescale GDN channels (and the latent input) so that one int8 range "
                                       "per tensor fits every channel; the float function is unchanged."),
    threads: int = ThreadsOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per stage."),
    quiet: bool = QuietOption,
) -> None:
    """Calibrate INT8 (Q/DQ) variants of the synthesis/analysis graphs for TensorRT or ONNX Runtime CPU."""
    from ckbd.calibration import calibrate, check_stages
    from ckbd.calibration.targets import quant_target

    quant_target(target)  # a bad --target fails before any image is read
    from ckbd.data_paths import default_train_dir

    stage_list = check_stages(stages)  # refuse parameter graphs before any image is read
    if checkpoint is not None and not fine_tune_steps:
        raise UsageError("--checkpoint is only read by --fine-tune-steps")
    fine_tune = FineTuneConfig(fine_tune_steps, lr=fine_tune_lr, checkpoint=checkpoint) if fine_tune_steps else None
    folder = images if images is not None else default_train_dir()
    manifest = calibrate(model_dir, folder, method=method, count=count, stages=stage_list,
                         per_channel=per_channel, threads=threads, progress=progress and not quiet, quantize_gdn=quantize_gdn,
                         reduce_range=reduce_range, target=target, max_loss_db=max_loss_db, fine_tune=fine_tune,
                         equalize=equalize)
    for stage in stage_list:
        entry = manifest.variants["int8"][stage]
        typer.echo(f"{stage}: wrote {model_dir / entry.file} (sha256 {entry.sha256[:16]}...)")
        found = manifest.extra.get("calibration", {}).get(stage, {})
        if "fine_tune" in found:
            tuned = found["fine_tune"]
            typer.echo(f"  fine-tuned {tuned['steps']} steps: fake-int8 vs fp32 synthesis MSE "
                       f"{tuned['mse_before']:.3g} -> {tuned['mse_after']:.3g}")
        if "estimated_loss_db" in found:
            kept = ", ".join(found["float_layers"]) or "none"
            typer.echo(f"  PSNR loss {found['estimated_loss_db']:.3f} dB on the calibration images "
                       f"(all layers int8: {found['all_quantized_loss_db']:.3f} dB); kept float: {kept}"
                       + ("" if found.get("budget_met", True) else " -- budget NOT met"))
    typer.echo(f"use it with: ckbd decode --precision int8 --model {model_dir} ...")
