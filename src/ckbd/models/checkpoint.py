"""ckbd's own checkpoint format, and the single entry point that loads any supported checkpoint.

A ckbd checkpoint stores the architecture config and a format version next to the weights, so
loading never guesses. Foreign (CompressAI-style) checkpoints go through
:mod:`ckbd.models.compressai_import`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckbd.errors import ModelError
from ckbd.models.architectures import HyperpriorModel
from ckbd.models.config import ModelConfig
from ckbd.models.registry import build_model
from ckbd.runtime.atomic import atomic_path

CHECKPOINT_FORMAT = "ckbd-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model: HyperpriorModel, training: dict[str, Any] | None = None,
                    half: bool = False) -> None:
    """Write weights + config (+ optional training state for resuming) atomically.

    ``half`` stores float weights as float16 (half the size, for shipping); they load back as
    float32, and a model exported after loading is what such a checkpoint defines.
    """
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "training": training or {},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """Read a checkpoint file as a dict without executing arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise ModelError(f"{path} is not a readable PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path} does not hold a state dict or a ckbd checkpoint")
    return raw


def is_ckbd_checkpoint(raw: dict[str, Any]) -> bool:
    return raw.get("format") == CHECKPOINT_FORMAT


def model_from_ckbd(raw: dict[str, Any]) -> HyperpriorModel:
    version = raw.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise ModelError(f"ckbd checkpoint format {version} is not supported (this ckbd reads {CHECKPOINT_VERSION})")
    model = build_model(ModelConfig.from_dict(raw["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"checkpoint does not fit {model.config.arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def load_model(path: Path, **import_options: Any) -> HyperpriorModel:
    """Load a ckbd or CompressAI-style checkpoint into an eval-mode model."""
    raw = read_checkpoint_file(path)
    if is_ckbd_checkpoint(raw):
        model = model_from_ckbd(raw)
    else:
        from ckbd.models.compressai_import import import_compressai

        model = import_compressai(raw, **import_options)
    return model.eval()
