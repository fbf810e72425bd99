"""The timing loop every codec goes through, and the figures derived from its results.

Every codec, whatever its implementation, is handed to :func:`time_codec` as a :class:`TimedCodec`:
two calls that record their stages on a :class:`~ckbd.runtime.profiling.StageTimer`. So all codecs
are warmed up, repeated and summarised (medians per stage) the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckbd.runtime.profiling import StageTimer, median_times
from ckbd.tools.bench.codecs.report import CodecResult, ImageTiming

#: Serial codecs are warmed up on a crop this big: a full-image warm-up would double their cost.
WARMUP_CROP = 64
#: The checkerboard's stages that the context schedule changes (compared with the serial ``context_decode``).
CONTEXT_STAGES_CKBD = ("anchor_params", "anchor_decode", "nonanchor_params", "nonanchor_decode")
#: Implementations that hold the same weights: (codec, reference it must reproduce).
SAME_WEIGHTS = (("ckbd-onnxruntime", "ckbd-torch"), ("compressai-mbt2018-ckbd", "ckbd-torch"),
                ("compressai-mbt2018", "mbt2018-torch"), ("compressai-mbt2018-mean", "mbt2018-mean-torch"))

Encode = Callable[[np.ndarray, StageTimer], tuple[Any, int]]  # image, timer -> (payload, bytes)
Decode = Callable[[Any, StageTimer], np.ndarray]  # payload, timer -> image


@dataclass
class TimedCodec:
    """A codec as the benchmark sees it: two timed calls and the stage names they record."""

    name: str
    label: str
    backend: str
    arch: str
    encode: Encode
    decode: Decode
    encode_stages: tuple[str, ...]
    decode_stages: tuple[str, ...]
    breakdown: tuple[str, ...] = ()  # extra keys recorded inside the stages (not summed)
    serial: bool = False
    group: str = "ckbd"  # "ckbd" (this repository's implementations) or "compressai"


def time_codec(codec: TimedCodec, images: Sequence[tuple[str, np.ndarray]], repeat: int,
               tick: Callable[[], None]) -> tuple[CodecResult, np.ndarray]:
    """Warm up once, then ``repeat`` timed encodes and decodes per image; medians per stage.

    Also returns the first image's reconstruction, to check that implementations sharing weights
    agree.
    """
    result = CodecResult(codec.name, codec.label, codec.backend, codec.arch, codec.group,
                         list(codec.decode_stages), list(codec.encode_stages))
    first: np.ndarray | None = None
    warm = images[0][1][:WARMUP_CROP, :WARMUP_CROP] if codec.serial else images[0][1]
    codec.decode(codec.encode(warm, StageTimer())[0], StageTimer())
    for name, image in images:
        enc_runs, dec_runs = [], []
        size = 0
        for _ in range(repeat):
            timer = StageTimer()
            payload, size = codec.encode(image, timer)
            enc_runs.append(timer.times_ms)
            timer = StageTimer()
            decoded = codec.decode(payload, timer)
            dec_runs.append(timer.times_ms)
            first = decoded if first is None else first
        h, w = image.shape[:2]
        breakdown = {k: statistics.median(r.get(k, 0.0) for r in dec_runs) for k in codec.breakdown}
        result.images.append(ImageTiming(name, w, h, size, 8.0 * size / (h * w),
                                         median_times(dec_runs, codec.decode_stages),
                                         median_times(enc_runs, codec.encode_stages), breakdown))
        tick()
    assert first is not None
    return result, first


def agreement(decoded: dict[str, np.ndarray], same_weights: bool) -> dict[str, float | str]:
    """PSNR (dB) between reconstructions of the first image by implementations sharing weights.

    "identical" means identical pixels; a finite but high value means float differences flipped a
    few roundings. Without shared weights (``--model``) only the CompressAI baselines are compared.
    """
    from ckbd.runtime.metrics import psnr

    out: dict[str, float | str] = {}
    for name, ref in SAME_WEIGHTS:
        if name in decoded and ref in decoded and (same_weights or "ckbd" not in name):
            value = psnr(decoded[name], decoded[ref])
            out[f"{name} vs {ref}"] = round(value, 2) if math.isfinite(value) else "identical"
    return out


def ratios(results: dict[str, CodecResult]) -> dict[str, float]:
    """How much slower serial decoding is than the checkerboard's, whole and context part only."""
    out: dict[str, float] = {}
    serial = results.get("mbt2018-torch")
    if serial is None:
        return out
    s_dec = serial.mean("decode_ms")
    for name in ("ckbd-torch", "ckbd-onnxruntime"):
        if name in results:
            c_dec = results[name].mean("decode_ms")
            out[f"serial_vs_{name}_decode"] = s_dec["total"] / c_dec["total"]
            context = sum(c_dec[s] for s in CONTEXT_STAGES_CKBD)
            out[f"serial_vs_{name}_context_stages"] = s_dec["context_decode"] / context
    ca_serial, ca_ckbd = results.get("compressai-mbt2018"), results.get("compressai-mbt2018-ckbd")
    if ca_serial and ca_ckbd:
        out["compressai_serial_vs_checkerboard_decode"] = (ca_serial.mean("decode_ms")["total"]
                                                           / ca_ckbd.mean("decode_ms")["total"])
    return out


#: The comparison the CPU speed goals are stated in: ckbd's exported graphs against CompressAI's
#: checkerboard model holding the same weights.
VERSUS_COMPRESSAI = ("ckbd-onnxruntime", "compressai-mbt2018-ckbd")


def time_vs_compressai(results: dict[str, CodecResult]) -> dict[str, float]:
    """ckbd's whole encode and decode time over CompressAI's for the same weights (lower is faster)."""
    ours, theirs = (results.get(name) for name in VERSUS_COMPRESSAI)
    if ours is None or theirs is None:
        return {}
    out = {}
    for kind in ("encode", "decode"):
        mine, their = ours.mean(f"{kind}_ms").get("total"), theirs.mean(f"{kind}_ms").get("total")
        if mine and their:
            out[kind] = mine / their
    return out
