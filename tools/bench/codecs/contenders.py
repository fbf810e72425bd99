"""The codecs this repository implements, wrapped for the timing loop.

(a) ckbd's checkerboard codec on ONNX Runtime (the exported graphs: what ships), (b) the same model
on the torch reference backend, (c) the serial-context baseline ``mbt2018``
(:class:`ckbd.baselines.SerialContextCodec`) and (d) the context-free ``mbt2018-mean``
(:class:`ckbd.baselines.MeanScaleCodec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import require
from ckbd.runtime.profiling import DECODE_STAGES, ENCODE_STAGES, StageTimer
from ckbd.tools.bench.codecs.timing import Decode, Encode, TimedCodec


def torch_module() -> Any:
    """torch, or the one-line error naming the extra that installs it."""
    return require("torch", "export", "The codec benchmark (torch baselines)")


def random_model(arch: str, N: int, M: int, seed: int) -> Any:
    """A randomly initialised model: latency does not depend on training."""
    torch = torch_module()
    from ckbd.models import ModelConfig, build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, N=N, M=M)).eval()


def ckbd_codecs(model: Any, model_dir: Path, threads: int) -> list[TimedCodec]:
    """(a) the exported graphs on ONNX Runtime and (b) the torch reference of ``model``."""
    from ckbd.export.torch_backend import checkpoint_package
    from ckbd.runtime.codec import Decoder, Encoder

    ort = (Encoder.open(model_dir, threads=threads), Decoder.open(model_dir, threads=threads))
    # the model's own computation (float entropy parameters, package built in memory): the reference
    package, backend = checkpoint_package(model)
    torch_pair = (Encoder.open(package, backend), Decoder.open(package, backend))
    return [_ckbd_timed("ckbd-onnxruntime", "ckbd checkerboard (ONNX Runtime)", "onnxruntime", *ort),
            _ckbd_timed("ckbd-torch", "ckbd checkerboard (torch reference)", "torch", *torch_pair)]


def _ckbd_timed(name: str, label: str, backend: str, encoder: Any, decoder: Any) -> TimedCodec:
    def encode(image: np.ndarray, timer: StageTimer) -> tuple[Any, int]:
        data = encoder.encode_detailed(image, timer, estimate=False).data
        return data, len(data)

    def decode(data: Any, timer: StageTimer) -> np.ndarray:
        return decoder.decode_detailed(data, timer).image  # type: ignore[no-any-return]

    return TimedCodec(name, label, backend, decoder.manifest.arch, encode, decode, ENCODE_STAGES, DECODE_STAGES)


def baseline_codecs(models: dict[str, Any]) -> list[TimedCodec]:
    """(c) serial context and (d) no context, checking each decode against its encode."""
    from ckbd.baselines import SERIAL_BREAKDOWN, baseline_codec

    out = []
    for arch, model in models.items():
        codec = baseline_codec(model)
        serial = arch == "mbt2018"
        label = "mbt2018 serial context (torch)" if serial else "mbt2018-mean, no context (torch)"
        out.append(TimedCodec(f"{arch}-torch", label, "torch", arch, *_checked(codec), codec.encode_stages,
                              codec.decode_stages, SERIAL_BREAKDOWN if serial else (), serial))
    return out


def _checked(codec: Any) -> tuple[Encode, Decode]:
    """Timed calls that verify every decode reproduces the last encode's symbols (untimed)."""
    last: dict[str, np.ndarray] = {}

    def encode(image: np.ndarray, timer: StageTimer) -> tuple[Any, int]:
        result = codec.encode_detailed(image, timer)
        last["symbols"] = result.latents.y_symbols
        return result.data, len(result.data)

    def decode(data: Any, timer: StageTimer) -> np.ndarray:
        result = codec.decode_detailed(data, timer)
        if "symbols" in last and not np.array_equal(result.latents.y_symbols, last["symbols"]):
            raise RuntimeError(f"{codec.arch} baseline decode does not reproduce its encode")  # a bug
        return result.image  # type: ignore[no-any-return]

    return encode, decode
