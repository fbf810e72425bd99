"""Training: the loss goes down, checkpoints resume where they stopped, bad options are refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ckbd.errors import CkbdError  # noqa: E402
from ckbd.models.checkpoint import is_ckbd_checkpoint, load_model, read_checkpoint_file  # noqa: E402
from ckbd.training import DEFAULT_LR, CropSampler, TrainConfig, Trainer, rd_loss, train  # noqa: E402


def tiny_config(**overrides) -> TrainConfig:
    base = dict(arch="mbt2018-ckbd", N=16, M=16, crop=64, batch=2, steps=36, lr=3e-3, aux_lr=1e-2,
                checkpoint_every=1000, seed=0, threads=1)
    return TrainConfig(**{**base, **overrides})


def fixed_batch_loss(trainer: Trainer, batch: torch.Tensor) -> float:
    """The training-mode loss on one batch with the same quantisation noise every time."""
    trainer.model.train()
    torch.manual_seed(123)
    with torch.no_grad():
        loss, _ = rd_loss(trainer.model, batch, trainer.config.lmbda)
    return float(loss)


def test_short_run_lowers_the_loss(image_folder):
    torch.set_num_threads(1)
    config = tiny_config()
    trainer = Trainer(config)
    sampler = CropSampler(image_folder, config.crop, seed=0)
    batch = CropSampler(image_folder, config.crop, seed=99).batch(4)
    before = fixed_batch_loss(trainer, batch)
    losses = [trainer.train_step(sampler.batch(config.batch)).loss for _ in range(config.steps)]
    after = fixed_batch_loss(trainer, batch)
    assert trainer.step == config.steps
    assert all(torch.isfinite(torch.tensor(losses)))
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_crop_sampler_skips_small_images(image_folder):
    sampler = CropSampler(image_folder, 64, seed=0)
    assert len(sampler.images) == 3  # the 32x40 image cannot give a 64x64 crop
    batch = sampler.batch(3)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.float32
    assert batch.is_contiguous()  # channels-last strides crash torch's CPU conv backward
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_checkpoint_then_resume_continues_the_step_count(image_folder, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run.pt"
    first = train(tiny_config(steps=3, checkpoint_every=2), image_folder, out, progress=False)
    assert first.step == 3
    raw = read_checkpoint_file(out)
    assert is_ckbd_checkpoint(raw) and raw["training"]["step"] == 3
    assert raw["config"]["arch"] == "mbt2018-ckbd"

    resumed = train(tiny_config(steps=5), image_folder, out, resume=True, progress=False)
    assert resumed.step == 5
    assert read_checkpoint_file(out)["training"]["step"] == 5
    assert resumed.optimizer.state_dict()["state"], "optimizer state should be restored"
    model = load_model(out)
    assert model.config.N == 16 and not model.training

    again = train(tiny_config(steps=5), image_folder, out, resume=True, progress=False)
    assert again.step == 5  # already done: nothing more to train


def test_resume_keeps_the_saved_learning_rate_unless_one_is_given(image_folder, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run.pt"
    train(tiny_config(steps=1, lr=2e-3), image_folder, out, progress=False)

    kept = Trainer.resume(out, tiny_config(lr=None))
    assert [g["lr"] for g in kept.optimizer.param_groups] == [2e-3] and kept.config.lr == 2e-3

    annealed = train(tiny_config(steps=2, lr=2e-4), image_folder, out, resume=True, progress=False)
    assert [g["lr"] for g in annealed.optimizer.param_groups] == [2e-4]
    saved = read_checkpoint_file(out)["training"]
    assert saved["config"]["lr"] == 2e-4 and saved["optimizer"]["param_groups"][0]["lr"] == 2e-4


def test_a_new_run_without_a_rate_uses_the_default():
    assert Trainer(tiny_config(lr=None)).config.lr == DEFAULT_LR


def test_resume_takes_the_architecture_from_the_file(image_folder, tmp_path):
    out = tmp_path / "run.pt"
    train(tiny_config(arch="mbt2018-mean", steps=1), image_folder, out, progress=False)
    resumed = Trainer.resume(out, tiny_config(arch="mbt2018-ckbd", N=32, M=32, steps=2))
    assert resumed.model.config.arch == "mbt2018-mean" and resumed.config.N == 16 and resumed.step == 1


def test_resume_refuses_foreign_checkpoints(tmp_path, make_model):
    path = tmp_path / "foreign.pt"
    torch.save(make_model("mbt2018-mean").state_dict(), path)
    with pytest.raises(CkbdError, match="not a ckbd checkpoint"):
        Trainer.resume(path, tiny_config())


@pytest.mark.parametrize("crop", [100, 32, 65])
def test_crop_must_be_a_multiple_of_64(crop):
    with pytest.raises(CkbdError, match="multiple of 64"):
        tiny_config(crop=crop)


def test_no_usable_images(tmp_path):
    with pytest.raises(CkbdError, match="no images"):
        CropSampler(tmp_path, 64, seed=0)
