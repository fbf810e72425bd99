"""The backends a GPU check can run on this machine, each opened as a decoder.

Whatever subset is installed is used: TensorRT engines (a ``gpu-cu12``/``gpu-cu13`` extra), ONNX
Runtime's CUDA provider (onnxruntime-gpu), and torch on CUDA (a CUDA build of torch, run from the
checkpoint the model directory was exported from). Each that is missing is reported with the
reason. With ``include_cpu`` ONNX Runtime's and torch's CPU paths are checked as well, which is how
the check itself is exercised on a machine without a GPU.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckbd.errors import installed
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.ort_backend import CUDA_PROVIDER
from ckbd.runtime.package import known_checkpoint
from ckbd.tools.check.gpu.compare import Target


@dataclass
class Discovery:
    targets: list[Target] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # backend -> why it is not checked


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None."""
    from ckbd.engines import ensure_tensorrt
    from ckbd.errors import CkbdError

    try:
        ensure_tensorrt("TensorRT")
    except CkbdError as exc:
        return str(exc)
    return None


def ort_cuda_missing() -> str | None:
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return None
    return f"onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu instead of onnxruntime)"


def torch_cuda_missing() -> str | None:
    if not installed("torch"):
        return "torch is not installed (the export extra)"
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def _opened(backend: Any, decoder: Any) -> tuple[Any, Callable[[], None]]:
    close = getattr(backend, "close", None)
    return decoder, close if callable(close) else (lambda: None)


def tensorrt_target(model_dir: Path, precision: str, device: int) -> Target:
    def open_() -> tuple[Any, Callable[[], None]]:
        from ckbd.engines.trt_backend import TensorRTBackend
        from ckbd.runtime.codec import Decoder

        backend = TensorRTBackend(device=device, precision=precision)
        try:
            return _opened(backend, Decoder.open(model_dir, backend=backend))
        except BaseException:
            backend.close()
            raise

    return Target(f"tensorrt-{precision}", open_)


def ort_target(model_dir: Path, device: str, threads: int = 0) -> Target:
    def open_() -> tuple[Any, Callable[[], None]]:
        from ckbd.runtime.codec import Decoder
        from ckbd.runtime.ort_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(device=device, threads=threads)
        return _opened(backend, Decoder.open(model_dir, backend=backend))

    return Target(f"onnxruntime-{device.replace(':', '')}", open_, gpu=device != "cpu")


def torch_target(model_dir: Path, checkpoint: Path, device: str) -> Target:
    """torch from ``checkpoint`` (and the model directory's integer spec, if it has one).

    On the integer path the index-deciding stages run on the device in their exact GEMM form, checked
    against the package's known answers when they load (falling back to the CPU with a notice). TF32
    (on by default for cuDNN convolutions) and cuDNN's timing-based algorithm search are switched
    off, as for the other backends, so the flips counted are not self-inflicted.
    """

    def open_() -> tuple[Any, Callable[[], None]]:
        import torch

        from ckbd.export.torch_backend import TorchBackend
        from ckbd.runtime.codec import Decoder
        from ckbd.runtime.package import ModelPackage

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        package = ModelPackage.open(Path(model_dir))
        backend = TorchBackend(checkpoint, device=device)  # integer stages: GEMM form, self-checked at load
        try:  # the backend checks that the package was exported from the checkpoint
            return _opened(backend, Decoder.open(package, backend))
        except BaseException:
            backend.close()
            raise

    return Target(f"torch-{device.replace(':', '')}", open_, gpu=device != "cpu")


def discover(
    model_dir: Path,
    manifest: Manifest,
    trt_precisions: tuple[str, ...],
    device: int = 0,
    checkpoint: Path | None = None,
    include_cpu: bool = False,
) -> Discovery:
    """Targets for every backend present (TensorRT at ``trt_precisions``), and why others are not."""
    found = Discovery()
    trt_reason = tensorrt_missing()
    if trt_reason is None:
        found.targets += [tensorrt_target(model_dir, p, device) for p in trt_precisions]
        if not trt_precisions:
            found.absent["tensorrt"] = "no engine set could be built"
    else:
        found.absent["tensorrt"] = trt_reason
    ort_reason = ort_cuda_missing()
    if ort_reason is None:
        found.targets.append(ort_target(model_dir, f"cuda:{device}"))
    else:
        found.absent["onnxruntime-cuda"] = ort_reason
    checkpoint = checkpoint or known_checkpoint(model_dir)
    torch_reason = torch_cuda_missing()
    if torch_reason is None and checkpoint is None:
        torch_reason = "no checkpoint for this model directory (pass --checkpoint)"
    if torch_reason is None and checkpoint is not None:
        found.targets.append(torch_target(model_dir, checkpoint, f"cuda:{device}"))
    else:
        found.absent["torch-cuda"] = str(torch_reason)
    if include_cpu:
        found.targets.append(ort_target(model_dir, "cpu", threads=1))
        if checkpoint is not None and installed("torch"):
            found.targets.append(torch_target(model_dir, checkpoint, "cpu"))
    return found
