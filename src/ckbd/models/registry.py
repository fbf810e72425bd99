"""Architecture names -> constructors."""

from __future__ import annotations

from collections.abc import Callable

from ckbd.errors import ModelError
from ckbd.models.architectures import (
    HyperpriorModel,
    cheng2020_checkerboard,
    mbt2018_checkerboard,
    mbt2018_mean,
    mbt2018_serial,
)
from ckbd.models.config import ModelConfig
from ckbd.models.random_mask import mbt2018_random_mask

ARCHITECTURES: dict[str, Callable[[ModelConfig], HyperpriorModel]] = {
    "mbt2018-ckbd": mbt2018_checkerboard,
    "cheng2020-ckbd": cheng2020_checkerboard,
    "mbt2018": mbt2018_serial,
    "mbt2018-mean": mbt2018_mean,
    "mbt2018-random-mask": mbt2018_random_mask,  # context-pattern study only; not exportable
}

def build_model(config: ModelConfig) -> HyperpriorModel:
    """Instantiate an architecture from its config (weights initialised randomly)."""
    try:
        factory = ARCHITECTURES[config.arch]
    except KeyError:
        raise ModelError(f"unknown architecture '{config.arch}'; known: {', '.join(ARCHITECTURES)}") from None
    return factory(config)
