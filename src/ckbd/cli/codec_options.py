"""Model/backend options shared by encode, decode, profile and eval, and how they open a codec."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer

ModelOption = typer.Option(None, "--model", "-m",
                           help="Exported model directory (default: the shipped model). A checkpoint with --backend torch.")


def _backend(value: str) -> str:
    from ckbd.runtime.backend import available_backends

    if value not in available_backends():
        raise typer.BadParameter(f"'{value}' is not a backend; choose one of {', '.join(available_backends())}")
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


def open_codec(cls: type[C], model: object, backend: str, threads: int = 0, precision: str = "fp32",
               memory: object = None) -> C:
    """Open an Encoder or Decoder on a backend from the registry; ``memory`` is its ``MemoryBudget``.

    ``model`` is an opened package or an exported directory (the shipped model when None) on any
    backend, or a checkpoint file, which only the torch backend runs (its package built in memory,
    float path).
    """
    from ckbd.errors import UsageError

    if isinstance(model, Path) and model.is_file():
        if backend != "torch":
            raise UsageError(f"{model} is a file: export it first (ckbd export {model} -o DIR), "
                             "or run the checkpoint with --backend torch")
        from ckbd.export.torch_backend import open_reference

        codec = open_reference(cls, model)
    else:
        codec = cls.open(model, backend, threads=threads, precision=precision)  # type: ignore[attr-defined]
    if memory is not None:
        codec.model.memory = memory  # type: ignore[attr-defined]
    return codec  # type: ignore[no-any-return]
