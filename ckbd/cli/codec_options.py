"""Model/backend options shared by encode, decode, profile and eval, and how they open a codec."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer

ModelOption = typer.Option(None, "--model", "-m",
                           help="Exported model directory (default: the shipped model). A checkpoint with --backend torch.")


def _backend(value: str) -> str:
    from ckbd.runtime.backend import available_backends

    choices = (*available_backends(), "torch")
    if value not in choices:
        raise typer.BadParameter(f"'{value}' is not a backend; choose one of {', '.join(choices)}")
    return value


def _precision(value: str) -> str:
    from ckbd.engines.metadata import PRECISIONS

    if value not in PRECISIONS:
        raise typer.BadParameter(f"'{value}' is not a precision; choose one of {', '.join(PRECISIONS)} "
                                 "(fp16/int8 need the variant in the model's manifest)")
    return value


BackendOption = typer.Option("onnxruntime", "--backend", "-b", callback=_backend,
                             help="onnxruntime (default), tensorrt, or torch (reference).")
ThreadsOption = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: all cores).")
ForceOption = typer.Option(False, "--force", "-f", help="Replace existing output files (never an input).")
PrecisionOption = typer.Option("fp32", "--precision", callback=_precision, help="fp32, or a calibrated variant listed in the manifest (int8, fp16).")

C = TypeVar("C")


def open_codec(cls: type[C], model: Path | None, backend: str, threads: int = 0, precision: str = "fp32",
               memory: object = None) -> C:
    """Open an Encoder or Decoder on the requested backend; ``memory`` is its ``MemoryBudget``."""
    if backend == "torch":
        codec = _open_torch(cls, model)
    else:
        options: dict[str, object] = {"precision": precision}
        if backend == "onnxruntime":
            options["threads"] = threads
        codec = cls.open(model, backend, **options)  # type: ignore[attr-defined]
    if memory is not None:
        codec.model.memory = memory  # type: ignore[attr-defined]
    return codec  # type: ignore[no-any-return]


def _open_torch(cls: type[C], model: Path | None) -> C:
    """The torch reference: a checkpoint (float path), a model directory exported from the shipped
    checkpoint, or by default the shipped model itself on its integer path (same bitstreams as ONNX)."""
    from ckbd.export.torch_backend import open_reference, open_reference_of_export
    from ckbd.runtime.model import default_model_dir

    if model is None or model.is_dir():
        shipped = default_model_dir()
        return open_reference_of_export(
            cls, shipped.parent / "default_checkpoint.pt", shipped if model is None else model,
            " (the shipped checkpoint): pass --model CHECKPOINT (float path) or use "
            "ckbd.export.torch_backend.open_reference(cls, CHECKPOINT, MODEL_DIR) from Python")
    return open_reference(cls, model)
