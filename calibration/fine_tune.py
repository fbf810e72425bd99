"""Quantisation-aware fine-tuning of latent synthesis, for when post-training INT8 loses too much.

Post-training calibration rounds weights that were trained in float. A short fine-tune with the
int8 rounding in the forward pass (:mod:`ckbd.calibration.fake_quant`) moves the synthesis weights
to values that survive it; the fine-tuned synthesis is then exported and calibrated as usual.

What it may change, and why that is safe: only the weights of the *int8 variant* of
``latent_synthesis``. The fp32 graphs, the entropy tables and the manifest fingerprint stay those of
the checkpoint, and synthesis reads decoded latents and writes pixels, never symbols, so every
stream decodes exactly as before and the fp32 decode keeps its quality.

Training pairs are the latents the model directory's own fp32 encoder decodes for the calibration
images (``symbol + mean``, bit for bit what the decoder hands to synthesis) and the fp32 synthesis of
each crop; the loss is the MSE of the fake-quantised synthesis against that fp32 output
(distillation), on random crops. ``mse_before``/``mse_after`` in the manifest are that error on the whole images.
The checkpoint must be the one the model directory was exported from (checked by fingerprint); the
shipped model finds its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckbd.errors import CkbdError, UsageError, require

#: Latents are 1/16 of the image per side, so crops are whole latent positions.
CROP_MULTIPLE = 16


@dataclass(frozen=True)
class FineTuneConfig:
    """How long and how hard to fine-tune (defaults: about a minute for the shipped model on 2 cores)."""

    steps: int = 300
    batch: int = 4
    crop: int = 256
    lr: float = 1e-4
    seed: int = 0
    #: The checkpoint the model directory was exported from (None: the shipped one, for the shipped model).
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--fine-tune-steps must be at least 1, got {self.steps}")
        if self.batch < 1:
            raise UsageError(f"the fine-tune batch must be at least 1, got {self.batch}")
        if self.crop < CROP_MULTIPLE or self.crop % CROP_MULTIPLE:
            raise UsageError(f"--fine-tune-crop must be a positive multiple of {CROP_MULTIPLE}, got {self.crop}")
        if not self.lr > 0:
            raise UsageError(f"--fine-tune-lr must be positive, got {self.lr}")


@dataclass
class FineTuneResult:
    """What the manifest records: the recipe, and the fake-quantised error against fp32 before and after."""

    steps: int
    batch: int
    crop: int
    lr: float
    seed: int
    checkpoint: str
    images: int
    mse_before: float
    mse_after: float
    seconds: float

    def to_manifest(self) -> dict[str, Any]:
        return {k: (round(v, 8) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def source_checkpoint(model_dir: Path, checkpoint: Path | None) -> Path:
    """The checkpoint to fine-tune: the given one, or the shipped one for the shipped model."""
    from ckbd.runtime.package import known_checkpoint

    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise CkbdError(f"checkpoint {checkpoint} does not exist")
        return Path(checkpoint)
    known = known_checkpoint(model_dir)
    if known is not None:
        return known
    raise UsageError("fine-tuning needs the weights the model was exported from: pass --checkpoint CHECKPOINT")


def fine_tuned_synthesis(model_dir: Path, files: Sequence[Path], path: Path, target: str, config: FineTuneConfig,
                         threads: int = 0, progress: bool = True) -> FineTuneResult:
    """Fine-tune the model behind ``model_dir`` and write its float latent synthesis graph to ``path``."""
    qat = require("ckbd.calibration.qat", "export", "INT8 fine-tuning")
    checkpoint = source_checkpoint(model_dir, config.checkpoint)
    model = qat.load_source_model(model_dir, checkpoint)
    latents = qat.decoded_latents(model, model_dir, files, threads)
    result: FineTuneResult = qat.fine_tune_synthesis(model, latents, target, config, threads, progress, checkpoint.name)
    qat.export_fine_tuned(model, model_dir, path)
    return result
