"""``export_checkpoint``: one call from a checkpoint file to a model directory, with the export's policy.

The policy decisions of an export live here, not in the command line, so that the CLI and Python users
get the same results: which checkpoint ``--default`` means (the shipped one), that the shipped model's
integer specification and known-answer inputs are reused so that ``--default`` reproduces the shipped
files byte for byte, which photos calibrate the integer path when none are given, and the scale table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckbd.errors import CkbdError, UsageError
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.stages import ALL_STAGES

ENTROPY_PARAMS = ("integer", "float")


@dataclass(frozen=True)
class ExportOptions:
    """What ``ckbd export`` lets a user choose; checked when built."""

    opset: int = 17
    stages: tuple[str, ...] = ALL_STAGES
    optimize: bool = True
    fp16: bool = False
    entropy_params: str = "integer"
    calibration_images: Path | None = None
    activation_bits: int = 8

    def __post_init__(self) -> None:
        if self.entropy_params not in ENTROPY_PARAMS:
            raise UsageError(f"--entropy-params must be integer or float, got {self.entropy_params!r}")
        if not 4 <= self.activation_bits <= 12:
            raise UsageError(f"--activation-bits must be between 4 and 12, got {self.activation_bits}")


def resolve_checkpoint(checkpoint: Path | None, use_default: bool) -> Path:
    """The checkpoint to export: the one given, or the shipped one for ``--default``."""
    from ckbd.runtime.package import default_checkpoint

    if use_default and checkpoint is not None:
        raise CkbdError("give either a CHECKPOINT or --default, not both")
    if use_default:
        if not default_checkpoint().is_file():
            raise CkbdError(f"the default checkpoint is not installed ({default_checkpoint()} is missing); "
                            "pass a CHECKPOINT to export")
        return default_checkpoint()
    if checkpoint is None:
        raise CkbdError("give a CHECKPOINT to export, or --default for the shipped model")
    return Path(checkpoint)


def calibration_folder(images: Path | None) -> Path:
    """Photos that calibrate the integer path: the ones given, else the project's training photos."""
    from ckbd.data_paths import SHARED_DATA

    folder = images if images is not None else SHARED_DATA / "train"
    if images is None and not folder.is_dir():
        raise UsageError("the integer entropy-parameter path needs calibration photos: pass "
                         "--calibration-images DIR (or export with --entropy-params float)")
    return folder


def export_checkpoint(checkpoint: Path | None, out: Path, options: ExportOptions | None = None,
                      use_default: bool = False) -> Manifest:
    """Export ``checkpoint`` (or the shipped one with ``use_default``) to ``out``; the written manifest.

    On the integer path the shipped model reuses its own specification and known-answer inputs (unless
    other calibration photos are given), so ``use_default`` reproduces the shipped files exactly;
    any other checkpoint is calibrated on ``options.calibration_images`` (default ``../shared/data/train``).
    """
    from ckbd.export.integer_quantize import QuantConfig, calibration_images, quantize_model
    from ckbd.export.known_answers import generate, photos_from, reproduce_shipped
    from ckbd.export.onnx_export import export_model
    from ckbd.export.stage_modules import require_checkerboard
    from ckbd.models.checkpoint import load_model
    from ckbd.runtime.entropy_tables import default_scale_table
    from ckbd.runtime.package import ModelPackage

    options = options or ExportOptions()
    model = require_checkerboard(load_model(resolve_checkpoint(checkpoint, use_default)))  # before calibrating
    spec = answers = None
    if options.entropy_params == "integer":
        if use_default and options.calibration_images is None:
            shipped = ModelPackage.open()
            spec = shipped.integer_params
            answers = reproduce_shipped(shipped, spec)
        else:
            folder = calibration_folder(options.calibration_images)
            spec = quantize_model(model, calibration_images(folder), default_scale_table(),
                                  QuantConfig(activation_bits=options.activation_bits))
            answers = generate(model, spec, photos_from(folder))
    return export_model(model, out, opset=options.opset, stages=options.stages, optimize=options.optimize,
                        fp16=options.fp16, integer_params=spec, known_answers=answers)
