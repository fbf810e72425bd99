"""Quantisation-aware fine-tuning before INT8 calibration (``ckbd calibrate --fine-tune-steps``).

A tiny exported model and the checkpoint it was exported from; assertions are about what the
fine-tune may and may not change, never about timings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

from ckbd.errors import ModelMismatchError, UsageError
from ckbd.runtime.manifest import Manifest, file_sha256

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))
SEED = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(exported model directory, the checkpoint it was exported from)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ckbd.export.onnx_export import export_model
    from ckbd.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("fine-tune")
    model = tiny_model("mbt2018-ckbd", N=16, M=24, seed=SEED)
    save_checkpoint(root / "source.pt", model)
    export_model(model, root / "float")
    return root / "float", root / "source.pt"


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def _config(checkpoint: Path | None, steps: int = 40) -> object:
    from ckbd.calibration import FineTuneConfig

    return FineTuneConfig(steps=steps, batch=2, crop=64, lr=1e-4, checkpoint=checkpoint)


def test_fine_tune_lowers_the_int8_error_and_changes_only_the_int8_synthesis(source: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    from ckbd.calibration import calibrate
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import read_image

    exported, checkpoint = source
    model_dir = _copy(exported, tmp_path)
    before = Manifest.load(model_dir)
    after = calibrate(model_dir, IMAGES, method="minmax", threads=1, progress=False, target="cpu",
                      fine_tune=_config(checkpoint))  # type: ignore[arg-type]
    tuned = after.extra["calibration"]["latent_synthesis"]["fine_tune"]
    assert tuned["steps"] == 40 and tuned["checkpoint"] == "source.pt" and tuned["images"] == len(IMAGES)
    assert tuned["mse_after"] < tuned["mse_before"]
    # The stream side is untouched: same fingerprint, same fp32 graphs, byte for byte.
    assert after.fingerprint == before.fingerprint
    for stage, entry in before.graphs.items():
        assert after.graphs[stage].sha256 == entry.sha256 == file_sha256(model_dir / entry.file), stage
    image = read_image(IMAGES[0], quiet=True)
    data = Encoder.open(model_dir, threads=1).encode(image)
    fp32 = Decoder.open(model_dir, threads=1).decode_detailed(data)
    int8 = Decoder.open(model_dir, threads=1, precision="int8").decode_detailed(data)
    assert np.array_equal(fp32.latents.anchor_hat, int8.latents.anchor_hat)
    assert int8.image.shape == image.shape
    error = np.abs(int8.image.astype(int) - fp32.image.astype(int)).mean()
    assert 0 < error < 20  # a different (quantised, fine-tuned) synthesis, close to fp32's


def test_a_checkpoint_the_model_was_not_exported_from_is_refused(source: tuple[Path, Path], tmp_path: Path) -> None:
    from ckbd.calibration import calibrate
    from ckbd.models.checkpoint import save_checkpoint

    exported, _ = source
    other = tmp_path / "other.pt"
    save_checkpoint(other, tiny_model("mbt2018-ckbd", N=16, M=24, seed=SEED + 1))
    model_dir = _copy(exported, tmp_path)
    with pytest.raises(ModelMismatchError, match="was not exported from .*other.pt"):
        calibrate(model_dir, IMAGES, threads=1, progress=False, fine_tune=_config(other))  # type: ignore[arg-type]
    assert not list(model_dir.glob("*.int8.onnx"))


def test_fine_tune_needs_the_source_checkpoint_and_synthesis(source: tuple[Path, Path], tmp_path: Path) -> None:
    from ckbd.calibration import FineTuneConfig, calibrate

    exported, checkpoint = source
    with pytest.raises(UsageError, match="--checkpoint"):
        calibrate(exported, IMAGES, threads=1, progress=False, fine_tune=_config(None))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="latent_synthesis only"):
        calibrate(exported, IMAGES, stages=("analysis",), fine_tune=_config(checkpoint))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="multiple of 16"):
        calibrate(exported, IMAGES, fine_tune=FineTuneConfig(crop=100, checkpoint=checkpoint))
    assert not list(exported.glob("*.int8.onnx"))


def test_fake_quant_rounds_like_the_qdq_graph() -> None:
    torch = pytest.importorskip("torch")
    from ckbd.calibration.fake_quant import RangeFakeQuant, fake_quant_weight, insert_fake_quant, remove_fake_quant

    weight = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 0.1, 10.0, 0.01]).reshape(4, 1, 1, 1)
    rounded = fake_quant_weight(weight, axis=0)
    for channel in range(4):  # per channel: symmetric, at most 255 levels, the extreme kept
        levels = rounded[channel].unique()
        assert len(levels) <= 255
        assert torch.isclose(rounded[channel].abs().max(), weight[channel].abs().max())
    assert not torch.equal(rounded, weight)
    observer = RangeFakeQuant(symmetric=False).train()
    x = torch.linspace(0.5, 3.0, 1000)
    observer(x)
    assert float(observer.low) == 0.5 and float(observer.high) == 3.0
    assert observer.eval()(torch.zeros(3)).eq(0).all()  # zero is exact in the asymmetric range
    g_s = tiny_model("mbt2018-ckbd", N=16, M=24).g_s
    types = [type(m) for m in g_s]
    wrappers = insert_fake_quant(g_s, symmetric=True)
    assert len(wrappers) == 3 and type(g_s[-1]) is torch.nn.ConvTranspose2d  # the image-side layer stays float
    remove_fake_quant(g_s)
    assert [type(m) for m in g_s] == types


def _ckbd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True,
                          env={**os.environ, "CKBD_DEBUG": ""}, timeout=300, check=False)


def test_cli_fine_tunes_then_calibrates(source: tuple[Path, Path], tmp_path: Path) -> None:
    exported, checkpoint = source
    model_dir = _copy(exported, tmp_path)
    r = _ckbd("calibrate", str(model_dir), "--images", str(DATA), "--target", "cpu", "--threads", "1",
              "--fine-tune-steps", "5", "--checkpoint", str(checkpoint), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "fine-tuned 5 steps" in r.stdout and (model_dir / "latent_synthesis.int8.onnx").is_file()
    r = _ckbd("calibrate", str(exported), "--images", str(DATA), "--checkpoint", str(checkpoint))
    assert r.returncode == 2 and "--checkpoint is only read by --fine-tune-steps" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
