"""The integer stages in GEMM form: float32 that is exact on every device, CPU or GPU.

The modules of :mod:`ckbd.export.integer_stages` carry integers in floats, and the exporter proves
``sum(|w|) * bound + |b| < 2**23`` for every output, so every product and every partial sum is an
integer float32 holds exactly, in any order. That argument needs a kernel that really multiplies
and adds those values: a convolution library may instead transform them (Winograd, FFT) or round
the operands (TF32 on a GPU, bf16 in oneDNN), and then the float result is no longer the integer
one. Here every convolution becomes im2col (``unfold``, pure data movement) and one float32
matrix product, run with TF32 and reduced-precision matmul off (:func:`exact_float32`); the rest of
each stage (power-of-two rescales, clamps, floors, gathers) is exact elementwise work already.
The exported graphs are untouched: this is a rewrite of copies, for the torch backend.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ckbd.export.integer_stages import integer_stage_modules
from ckbd.export.optimize import PaddedConv, PhaseDeconv, subpixel_deconv
from ckbd.runtime.intparams import IntegerParams

#: Largest im2col matrix one matrix product builds (bytes); taller outputs are done in row bands
#: so that a large image on the CPU does not allocate gigabytes of columns.
BAND_BYTES = 64 << 20


class GemmConv(nn.Module):
    """A convolution with explicit zero padding as ``weight (O, C*kh*kw) @ unfold(x)`` plus bias."""

    weight: Tensor
    bias: Tensor

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: int,
                 pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        out_channels = weight.shape[0]
        self.kernel = (int(weight.shape[2]), int(weight.shape[3]))
        self.register_buffer("weight", weight.detach().reshape(out_channels, -1).clone())
        bias = torch.zeros(out_channels, dtype=weight.dtype) if bias is None else bias.detach()
        self.register_buffer("bias", bias.reshape(1, out_channels, 1).clone())
        self.stride = int(stride)
        self.pads = tuple(int(p) for p in pads)  # (left, right, top, bottom), as F.pad takes them

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        (kh, kw), s = self.kernel, self.stride
        rows, cols = (x.shape[2] - kh) // s + 1, (x.shape[3] - kw) // s + 1
        band = max(1, BAND_BYTES // (x.element_size() * self.weight.shape[1] * cols))
        if band >= rows:
            return self._product(x, rows, cols)
        bands = [self._product(x[:, :, r * s: (min(r + band, rows) - 1) * s + kh], min(band, rows - r), cols)
                 for r in range(0, rows, band)]
        return torch.cat(bands, dim=2)

    def _product(self, x: Tensor, rows: int, cols: int) -> Tensor:
        if self.kernel == (1, 1) and self.stride == 1:
            columns = x.reshape(x.shape[0], x.shape[1], -1)
        else:
            columns = F.unfold(x, self.kernel, stride=self.stride)
        out = torch.matmul(self.weight, columns) + self.bias
        return out.reshape(x.shape[0], -1, rows, cols)


def _from_conv(conv: nn.Conv2d) -> GemmConv:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"no GEMM form for {conv}")
    (ph, pw), (sh, sw) = conv.padding, conv.stride
    if sh != sw:
        raise ValueError(f"no GEMM form for {conv}")
    return GemmConv(conv.weight, conv.bias, sh, (pw, pw, ph, ph))


def _from_deconv(deconv: nn.ConvTranspose2d) -> nn.Module:
    """A transposed convolution as its per-phase convolutions (or the sub-pixel conv), in GEMM form."""
    try:
        phases: nn.Module = PhaseDeconv(deconv)
    except ValueError:
        phases = subpixel_deconv(deconv)
        if phases is deconv:
            raise ValueError(f"no GEMM form for {deconv}") from None
    _rewrite_children(phases)
    return phases


def _gemm(module: nn.Module) -> nn.Module:
    if isinstance(module, PaddedConv):
        return GemmConv(module.weight, module.bias, 1, module.pads)  # type: ignore[arg-type]
    if isinstance(module, nn.Conv2d):
        return _from_conv(module)
    if isinstance(module, nn.ConvTranspose2d):
        return _from_deconv(module)
    return module


def _rewrite_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        _rewrite_children(child)
        setattr(module, name, _gemm(child))


#: Module types the GEMM form must not contain: each would call a convolution kernel.
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                PaddedConv)


def gemm_form(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose convolutions are :class:`GemmConv` matrix products."""
    module = _gemm(copy.deepcopy(module))
    _rewrite_children(module)
    left = [name or type(m).__name__ for name, m in module.named_modules() if isinstance(m, CONVOLUTIONS)]
    if left:
        raise ValueError(f"convolutions left in the GEMM form: {', '.join(left)}")
    return module


# ---------------------------------------------------------------------------------------------
# Exact float32 matrix products, scoped


_lock = threading.Lock()
_depth = 0
_restore: Callable[[], None] | None = None

#: torch >= 2.9 also names these settings per backend; reading the legacy ones raises after code
#: has used the new names, so the state is saved through whichever API can read it.
_PER_BACKEND = (("cuda", "matmul"), ("cudnn", "conv"), ("mkldnn", "matmul"), ("mkldnn", "conv"))


def _saved_state() -> Callable[[], None]:
    """A function that puts the matmul and convolution precision settings back as they are now."""
    try:
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        cudnn_tf32 = torch.backends.cudnn.allow_tf32
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:  # the process set them through the per-backend names: restore those
        targets = [getattr(getattr(torch.backends, b), op) for b, op in _PER_BACKEND]
        values = [t.fp32_precision for t in targets]

        def restore_per_backend() -> None:
            for target, value in zip(targets, values):
                target.fp32_precision = value

        return restore_per_backend

    def restore_legacy() -> None:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(precision)

    return restore_legacy


@contextmanager
def exact_float32() -> Iterator[None]:
    """Within this block float32 matrix products round like IEEE float32: no TF32 on CUDA, no bf16
    passes in oneDNN on the CPU (``"highest"``). Restored on exit.

    Re-entrant and thread-safe: the settings are process-wide, so the first block in saves them
    and the last one out restores them; another thread's work meanwhile only runs without TF32
    (slower, never less exact).
    """
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = _saved_state()
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore is not None:
                _restore()
                _restore = None


class ExactStage(nn.Module):
    """One integer stage in GEMM form, always run under :func:`exact_float32`."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = gemm_form(stage)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        with exact_float32():
            return self.stage(*inputs)  # type: ignore[no-any-return]


def gemm_stage_modules(spec: IntegerParams) -> dict[str, nn.Module]:
    """The three index-deciding stages of ``spec`` in float32 GEMM form, keyed by stage name."""
    return {name: ExactStage(module).eval() for name, module in integer_stage_modules(spec, torch.float32).items()}
