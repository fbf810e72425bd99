"""Shared fixtures: tiny models and small generated images (nothing outside the repository)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:  # torch stays out of conftest's import so torch-free tests run without it
    import torch

    from ckbd.models.architectures import HyperpriorModel

#: Tiny channel counts keep every model test well under a second on one core.
TINY_N = 16
TINY_M = 24


def tiny_model(
    arch: str = "mbt2018-ckbd",
    *,
    N: int = TINY_N,
    M: int | None = None,
    parity: str = "even",
    eb_filters: tuple[int, ...] = (3, 3, 3),
    seed: int = 0,
) -> HyperpriorModel:
    """A small model with every parameter perturbed, so no weight is at a symmetric initial value.

    Random GDN/bottleneck parameters make a wrong permutation or parity visible in the outputs.
    """
    import torch

    from ckbd.models.config import ModelConfig
    from ckbd.models.registry import build_model

    torch.set_num_threads(1)  # the models are tiny: extra threads only contend for the 2 cores
    if M is None:
        M = N if arch == "cheng2020-ckbd" else TINY_M
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, N=N, M=M, anchor_parity=parity, eb_filters=eb_filters))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def rgb_tensor(height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) image in [0, 1] with smooth structure plus noise, like a small photo."""
    import torch

    torch.set_num_threads(1)
    return torch.from_numpy(rgb_array(height, width, seed)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def rgb_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) gradient-and-blobs image; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for c in range(3):
        fy, fx = rng.uniform(0.02, 0.15, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.35 * np.sin(fy * yy + fx * xx + phase + c)
        channels.append(base)
    img = np.stack(channels, axis=-1) + rng.normal(0, 0.04, size=(height, width, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


@pytest.fixture
def make_model() -> Callable[..., Any]:
    pytest.importorskip("torch")
    return tiny_model


@pytest.fixture
def image() -> torch.Tensor:
    pytest.importorskip("torch")
    return rgb_tensor(64, 128)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder with a few small PNG photos (one too small to crop, to be skipped)."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(96, 96), (80, 128), (64, 64), (32, 40)]):
        Image.fromarray(rgb_array(h, w, seed=i)).save(folder / f"img{i}.png")
    return folder


def export_tiny_float(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mbt2018-ckbd (N=16, M=24) exported with float graphs: what the INT8 tests calibrate."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ckbd.export.onnx_export import export_model

    out = tmp_path_factory.mktemp("tiny-export") / "float"
    export_model(tiny_model("mbt2018-ckbd", N=16, M=24, seed=5), out)
    return out
