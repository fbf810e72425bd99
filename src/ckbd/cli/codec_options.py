"""Model/backend options shared by encode, decode, profile and eval, and how they open a codec."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from ckbd.runtime.memory import MemoryBudget

ModelOption = typer.Option(None, "--model", "-m",
                           help="Exported model directory (default: the shipped model). A checkpoint with --backend torch.")


def _backend(value: str) -> str:
    from ckbd.runtime.backend import available_backends

    if value not in available_backends():
        raise typer.BadParameter(f"'{value}' is not a backend; choose one of {', '.join(available_backends())}")
    return value


#: What --precision means on the torch backend: the dtype its image transforms compute in.
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


def _precision(value: str) -> str:
    from ckbd.engines.metadata import PRECISIONS

    known = tuple(dict.fromkeys(PRECISIONS + TORCH_PRECISIONS))
    if value not in known:
        raise typer.BadParameter(f"'{value}' is not a precision; choose one of {', '.join(known)} "
                                 "(fp16/int8 need the variant in the model's manifest; bf16 is torch only)")
    return value


def _device(value: str | None) -> str | None:
    kind, colon, index = (value or "cpu").partition(":")
    if value is not None and value != "cpu" and (kind != "cuda" or (colon and not index.isdigit())):
        raise typer.BadParameter(f"'{value}' is not a device; use cpu, cuda or cuda:N")
    return value


BackendOption = typer.Option("onnxruntime", "--backend", "-b", callback=_backend,
                             help="onnxruntime (default), tensorrt, or torch (reference).")
ThreadsOption = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: all cores).")
CoderThreadsOption = typer.Option(0, "--coder-threads", min=0,
                                  help="Threads that range-code the substreams of a pass (0: the cores this process "
                                       "may use); the output is the same for every value.")
ForceOption = typer.Option(False, "--force", "-f", help="Replace existing output files (never an input).")
PrecisionOption = typer.Option("fp32", "--precision", callback=_precision,
                               help="fp32, or a calibrated variant listed in the manifest (int8, fp16); with --backend "
                                    "torch the dtype of the image transforms (fp32, fp16, bf16).")
DeviceOption = typer.Option(None, "--device", callback=_device,
                            help="cpu, cuda or cuda:N: where torch (default cpu) or ONNX Runtime runs the stages; "
                                 "for tensorrt the CUDA device.")

C = TypeVar("C")


def backend_options(backend: str, device: str | None = None, precision: str = "fp32",
                    timed: bool = False) -> dict[str, object]:
    """--device, --precision (and a profile's ``timed``) as the backend's own options; a combination the
    backend cannot run is a usage error, found before any work starts.

    torch and ONNX Runtime take the device name; TensorRT takes the CUDA device's index. ``timed``
    makes each torch stage wait for its device work, so that per-stage wall times are its own.
    """
    from ckbd.errors import UsageError

    options: dict[str, object] = {"precision": precision}
    if backend == "torch":
        if precision not in TORCH_PRECISIONS:
            raise UsageError(f"--precision {precision}: the torch backend runs the image transforms in "
                             f"{', '.join(TORCH_PRECISIONS)} ({precision} is a calibrated ONNX variant)")
        options["synchronize"] = timed
    elif precision == "bf16":
        raise UsageError(f"--precision bf16 is a torch-backend precision; {backend} runs the variants in the "
                         "model's manifest (fp32, fp16, int8)")
    if device is None:
        return options
    if backend == "torch":
        from ckbd.export.torch_device import torch_device

        torch_device(device)  # no such device here: one line, before any model is loaded
        options["device"] = device
    elif backend == "onnxruntime":
        options["device"] = device
    elif backend == "tensorrt" and device != "cpu":
        options["device"] = int(device.partition(":")[2] or 0)
    else:
        raise UsageError(f"--device {device}: the {backend} backend runs on CUDA devices only")
    return options


def open_codec(cls: type[C], model: object, backend: str, threads: int = 0, precision: str = "fp32",
               memory: MemoryBudget | None = None, device: str | None = None, timed: bool = False, coder_threads: int = 0) -> C:
    """Open an Encoder or Decoder on a backend from the registry; ``memory`` is its ``MemoryBudget``,
    ``coder_threads`` its range coder's threads (0: the cores this process may use).

    ``model`` is an opened package or an exported directory (the shipped model when None) on any
    backend, or a checkpoint file, which only the torch backend runs (its package built in memory,
    float path). ``device``, ``precision`` and ``timed``: see :func:`backend_options`.
    """
    from ckbd.errors import UsageError

    options = backend_options(backend, device, precision, timed)
    if isinstance(model, Path) and model.is_file():
        if backend != "torch":
            raise UsageError(f"{model} is a file: export it first (ckbd export {model} -o DIR), "
                             "or run the checkpoint with --backend torch")
        from ckbd.export.torch_backend import open_reference

        return open_reference(cls, model, memory=memory, coder_threads=coder_threads, **options)
    return cls.open(model, backend, threads=threads, memory=memory, coder_threads=coder_threads,  # type: ignore[attr-defined,no-any-return]
                    **options)
