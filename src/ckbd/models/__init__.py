"""PyTorch models (training and export only; the runtime never imports this package)."""

from ckbd.models.config import ModelConfig
from ckbd.models.registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "ModelConfig", "build_model"]
