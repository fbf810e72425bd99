"""Tiny exportable models, stage inputs and tolerances shared by the export tests.

Models are tiny (N=32) so each configuration exports in seconds on one core.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ckbd.models import ModelConfig, build_model
from ckbd.runtime.entropy_tables import default_scale_table

CONFIGS = [
    ("mbt2018-ckbd", 32, 48, "even"),
    ("mbt2018-ckbd", 32, 48, "odd"),
    ("cheng2020-ckbd", 32, 32, "even"),
    ("cheng2020-ckbd", 32, 32, "odd"),
]
IMAGE_SIZES = [(64, 128), (128, 192)]  # padded (H, W): latents 4x8 and 8x12
TABLE = default_scale_table()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny convs on two threads are ~20x slower than on one when the other core is busy.

    Autouse in every module that imports it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(arch: str, N: int, M: int, parity: str, seed: int = 0) -> torch.nn.Module:
    """A random model whose latents, z symbols and scales span useful ranges.

    Freshly initialised models round almost everything to zero; scaling a few output layers
    makes the symbols, indexes and pixels exercise the graphs.
    """
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, N=N, M=M, anchor_parity=parity)).eval()
    with torch.no_grad():
        for layer in (model.g_a[-1], model.h_a[-1], model.h_s[-1], model.entropy_parameters[-1]):
            layer.weight.mul_(10)
        model.context_prediction.weight.mul_(3)
        for name, param in model.named_parameters():  # non-trivial GDN reparametrisations
            if name.endswith((".beta", ".gamma")):
                param.add_(0.05 * torch.rand_like(param))
    return model


def rel_err(ref: np.ndarray | torch.Tensor, got: np.ndarray | torch.Tensor) -> float:
    ref_np = np.asarray(ref, dtype=np.float64)
    got_np = np.asarray(got, dtype=np.float64)
    return float(np.abs(ref_np - got_np).max() / max(np.abs(ref_np).max(), 1e-12))


def stage_inputs(stage: str, N: int, M: int, H: int, W: int, rng: np.random.Generator,
                 hyper: np.ndarray | None = None) -> dict[str, np.ndarray]:
    h, w = H // 16, W // 16
    if stage == "analysis":
        return {"image": rng.random((1, 3, H, W), dtype=np.float32)}
    if stage == "hyper_synthesis":
        return {"z_symbols": rng.integers(-3, 4, (1, N, h // 4, w // 4)).astype(np.int32)}
    half = (1, M, h, w // 2)
    if stage == "anchor_params":
        return {"hyper": hyper}
    anchor = (4 * rng.standard_normal(half)).astype(np.float32)
    if stage == "nonanchor_params":
        return {"hyper": hyper, "anchor_hat": anchor}
    return {"anchor_hat": anchor, "nonanchor_hat": (4 * rng.standard_normal(half)).astype(np.float32)}
