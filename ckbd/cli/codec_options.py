"""Model/backend options shared by encode, decode, profile and eval, and how they open a codec."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer

from ckbd.errors import CkbdError

ModelOption = typer.Option(None, "--model", "-m",
                           help="Exported model directory (default: the shipped model). A checkpoint with --backend torch.")
BackendOption = typer.Option("onnxruntime", "--backend", "-b", help="onnxruntime (default), tensorrt, or torch (reference).")
ThreadsOption = typer.Option(0, "--threads", help="CPU threads for ONNX Runtime (0: all cores).")
PrecisionOption = typer.Option("fp32", "--precision", help="fp32, or a calibrated variant listed in the manifest (int8, fp16).")

C = TypeVar("C")


def open_codec(cls: type[C], model: Path | None, backend: str, threads: int = 0, precision: str = "fp32") -> C:
    """Open an Encoder or Decoder on the requested backend."""
    if backend == "torch":
        if model is None:
            raise CkbdError("--backend torch needs --model CHECKPOINT")
        from ckbd.export.torch_backend import open_reference

        return open_reference(cls, model)
    options: dict[str, object] = {"precision": precision}
    if backend == "onnxruntime":
        options["threads"] = threads
    return cls.open(model, backend, **options)  # type: ignore[attr-defined,no-any-return]
