"""Rate-distortion training on random crops of a folder of photos.

Built for small CPUs: images are decoded once into memory and crops are cut with numpy, so the
two cores spend their time in the convolutions rather than in PNG decoding.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ckbd.errors import CkbdError, Interrupted, ModelError, UsageError
from ckbd.models.architectures import HyperpriorModel
from ckbd.models.checkpoint import is_ckbd_checkpoint, model_from_ckbd, read_checkpoint_file, save_checkpoint
from ckbd.models.config import ModelConfig
from ckbd.models.registry import ARCHITECTURES, build_model
from ckbd.progress import progress as progress_bar
from ckbd.runtime.imageio import find_images, read_image
from ckbd.stop_signals import StopOnSignal

#: The shipped recipe's first-phase rate (ckbd/assets/RECIPE.json); the defaults below are its too.
DEFAULT_LR = 2e-4


@dataclass
class TrainConfig:
    arch: str = "mbt2018-ckbd"
    N: int = 64
    M: int = 96
    lmbda: float = 0.013
    steps: int = 100_000
    batch: int = 8
    crop: int = 128
    lr: float | None = None  # None: DEFAULT_LR for a new run, the checkpoint's rate for a resumed one
    aux_lr: float = 1e-3
    ste_from: float = 0.05  # fraction of steps after which synthesis sees STE-rounded latents
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 0  # 0: torch's default
    device: str = "auto"  # auto: CUDA when present, else CPU
    init_from: str | None = None  # a new run starts from this checkpoint's matching weights

    def __post_init__(self) -> None:
        """Every value checked before any work, each failure a :class:`UsageError` naming the option."""
        if self.arch not in ARCHITECTURES:
            raise UsageError(f"--arch {self.arch}: unknown architecture; choose one of {', '.join(ARCHITECTURES)}")
        if self.crop < 64 or self.crop % 64:
            raise UsageError(f"--crop must be a positive multiple of 64 (the model's total downsampling), "
                             f"got {self.crop}")
        for option, value in (("--N", self.N), ("--M", self.M), ("--steps", self.steps), ("--batch", self.batch),
                              ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}")
        for option, rate in (("--lambda", self.lmbda), ("--lr", self.lr), ("aux_lr", self.aux_lr)):
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise UsageError(f"{option} must be a positive number, got {rate}")
        try:
            ModelConfig(arch=self.arch, N=self.N, M=self.M)  # the architecture's own size rules
        except ModelError as exc:
            raise UsageError(f"{exc} (--N/--M)") from None
        if not 0.0 <= self.ste_from <= 1.0:
            raise UsageError(f"--ste-from is a fraction of --steps in [0, 1], got {self.ste_from}")
        if self.threads < 0:
            raise UsageError(f"--threads must be 0 (torch's default) or more, got {self.threads}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass
class StepStats:
    loss: float
    bpp: float
    mse: float

    @property
    def psnr(self) -> float:
        return 10 * math.log10(1 / max(self.mse, 1e-12))


class CropSampler:
    """Random crops (with flips) from images held in memory as uint8 arrays."""

    def __init__(self, folder: Path, crop: int, seed: int) -> None:
        files = find_images(folder, what="training image")
        self.images = [img for img in (read_image(p, quiet=True) for p in files) if min(img.shape[:2]) >= crop]
        if not self.images:
            raise CkbdError(f"no images of at least {crop}x{crop} pixels under {folder}")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        crops = [self._one() for _ in range(size)]
        # Contiguous NCHW: a channels-last-strided batch sends torch's CPU backward of the strided
        # 1x1 skip conv (3 input channels) into heap corruption (torch 2.13, Cheng g_a).
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)

    def _one(self) -> np.ndarray:
        img = self.images[self.rng.integers(len(self.images))]
        top = self.rng.integers(img.shape[0] - self.crop + 1)
        left = self.rng.integers(img.shape[1] - self.crop + 1)
        crop = img[top : top + self.crop, left : left + self.crop]
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop)


def init_matching_weights(model: HyperpriorModel, path: Path) -> list[str]:
    """Copy every weight of checkpoint ``path`` that ``model`` also has; return their names.

    Fine-tuning a variant (e.g. the random-mask model) from a trained model of another
    architecture reuses its transforms and entropy models instead of training them from scratch.
    A shared name with another shape means other N/M: an error rather than a partial copy.
    """
    raw = read_checkpoint_file(path)
    if not is_ckbd_checkpoint(raw):
        raise CkbdError(f"{path} is not a ckbd checkpoint; --init-from needs one")
    source, target = model_from_ckbd(raw).state_dict(), model.state_dict()
    copied = [k for k in source if k in target]
    wrong = [k for k in copied if source[k].shape != target[k].shape]
    if wrong or not copied:
        got = model_from_ckbd(raw).config
        raise CkbdError(f"{path} ({got.arch}, N={got.N}, M={got.M}) does not fit {model.config.arch} "
                        f"with N={model.config.N}, M={model.config.M}")
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return copied


def rd_loss(model: HyperpriorModel, x: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, StepStats]:
    """λ·255²·MSE + bpp, the rate counted from both latents' likelihoods."""
    out = model(x)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bits = -(torch.log2(out.y_likelihoods).sum() + torch.log2(out.z_likelihoods).sum())
    bpp = bits / pixels
    mse = torch.mean((out.x_hat - x) ** 2)
    loss = lmbda * 255**2 * mse + bpp
    return loss, StepStats(float(loss.detach()), float(bpp.detach()), float(mse.detach()))


class Trainer:
    """Owns the model, both optimisers and the step counter; checkpoints can resume all three."""

    def __init__(self, config: TrainConfig, model: HyperpriorModel | None = None) -> None:
        lr = DEFAULT_LR if config.lr is None else config.lr
        self.config = replace(config, lr=lr)
        torch.manual_seed(config.seed)
        self.device = resolve_device(config.device)
        if model is None:
            model = build_model(ModelConfig(config.arch, config.N, config.M))
            if config.init_from:
                init_matching_weights(model, Path(config.init_from))
        self.model = model.to(self.device)
        main = [p for n, p in self.model.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.model.named_parameters() if n.endswith("quantiles")]
        self.optimizer = torch.optim.Adam(main, lr=lr)
        self.aux_optimizer = torch.optim.Adam(aux, lr=config.aux_lr)
        self.step = 0
        self.elapsed_s = 0.0

    def train_step(self, x: torch.Tensor) -> StepStats:
        x = x.to(self.device, non_blocking=True)
        self.model.train()
        self.model.ste_synthesis = self.step >= self.config.ste_from * self.config.steps
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = rd_loss(self.model, x, self.config.lmbda)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.aux_optimizer.zero_grad(set_to_none=True)
        self.model.aux_loss().backward()
        self.aux_optimizer.step()
        self.step += 1
        return stats

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.model, {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "config": asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
        })

    def _set_lr(self, lr: float | None) -> None:
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.config = replace(self.config, lr=float(self.optimizer.param_groups[0]["lr"]))

    @classmethod
    def resume(cls, path: Path, config: TrainConfig, expect: dict[str, object] | None = None) -> Trainer:
        """Continue from a ckbd checkpoint; architecture comes from the file, the schedule from ``config``.

        ``expect`` holds the architecture options the user gave (``arch``, ``N``, ``M``): one that
        differs from the file's is refused rather than silently ignored. The optimiser keeps its
        saved learning rate unless ``config.lr`` is set: resuming with a smaller rate is how a run
        is annealed for its last steps.
        """
        raw = read_checkpoint_file(path)
        if not is_ckbd_checkpoint(raw):
            raise CkbdError(f"{path} is not a ckbd checkpoint; only those can be resumed")
        model = model_from_ckbd(raw)
        arch = model.config
        saved = {"arch": arch.arch, "N": arch.N, "M": arch.M}
        differ = {k: v for k, v in (expect or {}).items() if saved.get(k) != v}
        if differ:
            asked = " ".join(f"--{k} {v}" for k, v in differ.items())
            raise UsageError(f"{path} holds {arch.arch} N={arch.N} M={arch.M}, not {asked}; drop those options "
                             "to continue it, or train the other model into a new -o")
        trainer = cls(TrainConfig(**{**asdict(config), "arch": arch.arch, "N": arch.N, "M": arch.M}), model)
        state = raw.get("training", {})
        if "optimizer" in state:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.aux_optimizer.load_state_dict(state["aux_optimizer"])
            trainer._set_lr(config.lr)
        trainer.step = int(state.get("step", 0))
        trainer.elapsed_s = float(state.get("elapsed_s", 0.0))
        return trainer


def train(config: TrainConfig, data: Path, out: Path, resume: bool = False, progress: bool = True,
          expect: dict[str, object] | None = None) -> Trainer:
    """Train until ``config.steps`` total steps, checkpointing to ``out`` periodically and at the end.

    On SIGINT/SIGTERM the step in progress finishes, the checkpoint is saved and
    :class:`~ckbd.errors.Interrupted` is raised, so ``--resume`` continues from exactly that step.
    ``expect``: see :meth:`Trainer.resume`.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = Trainer.resume(out, config, expect) if resume and Path(out).exists() else Trainer(config)
    sampler = CropSampler(data, config.crop, config.seed + trainer.step)
    ema: StepStats | None = None
    with StopOnSignal() as stop, progress_bar(total=config.steps, initial=trainer.step, desc="train", unit="step",
                                              enabled=progress) as bar:
        while trainer.step < config.steps and stop.signum is None:
            start = time.perf_counter()
            stats = trainer.train_step(sampler.batch(config.batch))
            trainer.elapsed_s += time.perf_counter() - start
            ema = stats if ema is None else StepStats(*(0.95 * a + 0.05 * b for a, b in
                                                        zip((ema.loss, ema.bpp, ema.mse), (stats.loss, stats.bpp, stats.mse))))
            bar.set_postfix(loss=f"{ema.loss:.3f}", bpp=f"{ema.bpp:.3f}", psnr=f"{ema.psnr:.2f}")
            bar.update(1)
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps or stop.signum:
                trainer.save(out)
        if trainer.step == 0 or not Path(out).exists():
            trainer.save(out)
    if stop.signum is not None and trainer.step < config.steps:
        raise Interrupted(f"interrupted at step {trainer.step}; saved {out} (continue with --resume)", stop.signum)
    return trainer
