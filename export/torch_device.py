"""Where the torch backend's tensors live, and what crosses between the host and a CUDA device.

On CUDA a stage output the codec asks to keep (``keep``, e.g. the hyper features) stays on the
device as a :class:`TorchTensor` and feeds the next stage in place. What the host needs crosses
once per run: every output is staged into page-locked (pinned) memory with one synchronisation
for all of them, and scale indexes travel in the narrowest dtype that holds every index of the
model's table (one byte for up to 256 scales) and are widened to the stage contract's int32 on
the host; means stay float32, the narrowest type that holds every multiple of 2**-8 they can be.
Host inputs go up through pinned memory without blocking the host.

Each CUDA backend queues its work on a stream of its own (:func:`on_stream`) and waits only for that
stream, so codecs in several threads (``--jobs``) overlap one file's range coding with another
file's GPU work instead of waiting for each other's kernels on the shared default stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from ckbd.errors import CkbdError, UsageError

NUMPY_TYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


def torch_device(spec: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; one that is not here is a one-line error."""
    kind, colon, index = spec.partition(":")
    if spec == "cpu":
        return torch.device("cpu")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise UsageError(f"unknown torch device '{spec}' (cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise CkbdError(f"device {spec}: {why} (torch {torch.__version__}); run on the CPU with device cpu")
    count = torch.cuda.device_count()
    if int(index or 0) >= count:
        raise CkbdError(f"device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", int(index or 0))


def index_dtype(table_size: int) -> torch.dtype:
    """The narrowest integer dtype holding every index into a table of ``table_size`` scales."""
    if table_size <= 256:
        return torch.uint8
    return torch.int16 if table_size <= 1 << 15 else torch.int32


def new_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own for a backend on ``device`` (None on the CPU)."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_stream(stream: torch.cuda.Stream | None) -> AbstractContextManager[object]:
    """Queue the block's CUDA work on ``stream`` (nothing to do for the CPU)."""
    return nullcontext() if stream is None else torch.cuda.stream(stream)


class TorchTensor:
    """A stage output left where it was computed (a :class:`~ckbd.runtime.backend.DeviceTensor`)."""

    def __init__(self, tensor: torch.Tensor, dtype: str, stream: torch.cuda.Stream | None = None) -> None:
        self.tensor = tensor
        self.dtype = dtype  # the stage contract's element type
        self.stream = stream  # the stream that computes it

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def to_host(self) -> np.ndarray:
        with on_stream(self.stream):
            return host_arrays({"x": self.tensor}, {"x": self.dtype})["x"]

    def __repr__(self) -> str:
        return f"TorchTensor(shape={self.shape}, device={self.tensor.device}, dtype={self.dtype})"


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to CUDA through a pinned copy, without waiting for the transfer."""
    tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def host_arrays(tensors: Mapping[str, torch.Tensor], dtypes: Mapping[str, str],
                narrow: Mapping[str, torch.dtype] | None = None) -> dict[str, np.ndarray]:
    """Host copies of ``tensors`` in their contract ``dtypes`` (numpy arrays that own their memory).

    CUDA tensors are first cast to ``narrow[name]`` on the device where given (exact: the caller
    vouches that every value fits), staged into pinned buffers on the current stream, and waited
    for once.
    """
    narrow = narrow or {}
    staged: dict[str, torch.Tensor] = {}
    streams = set()
    for name, tensor in tensors.items():
        if tensor.device.type == "cpu":
            staged[name] = tensor
            continue
        source = tensor.to(narrow[name]) if name in narrow else tensor
        host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
        host.copy_(source, non_blocking=True)
        staged[name] = host
        streams.add(torch.cuda.current_stream(tensor.device))
    for stream in streams:
        stream.synchronize()
    # astype copies: the pinned buffers go back to torch's host cache and may be reused
    return {name: host.numpy().astype(NUMPY_TYPES[dtypes[name]]) for name, host in staged.items()}


def synchronize(stream: torch.cuda.Stream | None) -> None:
    """Wait for the work queued on ``stream`` (None: the CPU, nothing to wait for)."""
    if stream is not None:
        stream.synchronize()
