"""Two-pass checkerboard encoder and decoder around the CPU range coder.

Both directions walk the same schedule through the same graphs on the same backend::

    z symbols -> hyper_synthesis -> anchor_params -> anchors -> nonanchor_params -> non-anchors

The encoder codes ``quantize(y, mean)`` where the decoder reads symbols, and both rebuild the
decoded latent as ``dequantize(symbol, mean)`` (the coder's one rule), so the scale indexes and means the
decoder computes are bit-identical to the ones the encoder coded with. A CRC of all symbols in
the header turns any desynchronisation into an error instead of a wrong image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Self

import numpy as np

from ckbd.errors import BitstreamError, ImageError, ModelError
from ckbd.runtime import bitstream as bs
from ckbd.runtime import substreams
from ckbd.runtime.backend import Backend, Tensor, to_host
from ckbd.runtime.coder import dequantize, quantize
from ckbd.runtime.memory import MemoryBudget, plan_synthesis
from ckbd.runtime.model import CodecModel
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.profiling import (
    ANCHOR_DECODE,
    ANCHOR_ENCODE,
    NONANCHOR_DECODE,
    NONANCHOR_ENCODE,
    Z_DECODE,
    Z_ENCODE,
    NullTimer,
    StageTimer,
)
from ckbd.runtime.stages import (
    ANALYSIS,
    ANCHOR_PARAMS,
    DECODER_STAGES,
    HYPER_SYNTHESIS,
    NONANCHOR_PARAMS,
)
from ckbd.runtime.stream_io import StreamData
from ckbd.runtime.symbols_crc import symbols_crc32
from ckbd.runtime.tiling import analyse_image, network_input, synthesise_image

#: Coding callback for one half: (indexes, means) -> integer symbols.
CodeHalf = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Latents:
    """Integer symbols and decoded latent halves of one image (what the round trip must reproduce)."""

    z_symbols: np.ndarray
    anchor_symbols: np.ndarray
    nonanchor_symbols: np.ndarray
    anchor_hat: np.ndarray
    nonanchor_hat: np.ndarray

    def crc32(self) -> int:
        return symbols_crc32(self.z_symbols, self.anchor_symbols, self.nonanchor_symbols)

    def equals(self, other: Latents) -> bool:
        """Bit-exact equality of every symbol and latent half."""
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))


@dataclass
class EncodeResult:
    data: bytes
    latents: Latents
    estimated_bits: float | None  # ideal code length of the payloads (when asked for)
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class DecodeResult:
    image: np.ndarray  # uint8 (H, W, 3)
    latents: Latents
    header: bs.Header
    timings_ms: dict[str, float] = field(default_factory=dict)


class _TwoPassSchedule:
    """The parameter passes both directions share; only how symbols are obtained differs."""

    def __init__(self, model: CodecModel, timer: StageTimer) -> None:
        self.model = model
        self.timer = timer

    def run(self, stage: str, feeds: dict[str, Tensor], keep: tuple[str, ...] = ()) -> dict[str, Tensor]:
        with self.timer.stage(stage):
            return self.model.runner(stage).run(feeds, keep)

    def hyper(self, z_symbols: np.ndarray) -> Tensor:
        return self.run(HYPER_SYNTHESIS, {"z_symbols": z_symbols}, keep=("hyper",))["hyper"]

    def half(self, stage: str, feeds: dict[str, Tensor], code: CodeHalf, code_stage: str,
             expect_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Parameters for one half, then its symbols via ``code``; returns (symbols, latent hat)."""
        prefix = "anchor" if stage == ANCHOR_PARAMS else "nonanchor"
        out = self.run(stage, feeds)
        indexes = to_host(out[f"{prefix}_indexes"])
        means = to_host(out[f"{prefix}_means"])
        if indexes.shape != expect_shape:
            raise ModelError(f"{stage} produced shape {indexes.shape}, expected {expect_shape}")
        with self.timer.stage(code_stage):
            symbols = code(indexes, means)
        return symbols, dequantize(symbols, means)


class _CodecBase:
    STAGES: tuple[str, ...] = ()
    #: Threads that range-code the substreams of a pass (0: the cores this process may use).
    coder_threads: int = 0

    def __init__(self, model: CodecModel, coder_threads: int = 0) -> None:
        self.model = model
        self.manifest = model.manifest
        self.coder_threads = coder_threads

    @classmethod
    def open(cls, model: ModelPackage | Path | None = None, backend: str | Backend = "onnxruntime", *,
             memory: MemoryBudget | None = None, coder_threads: int = 0, **options: object) -> Self:
        """Load this direction's stages of a model (the shipped one when None) on a backend: by
        name from the registry (``options`` go to it), or a backend object the caller closes.
        ``memory`` is the peak-memory budget, ``coder_threads`` the range coder's threads."""
        return cls(CodecModel.open(model, backend, stages=cls.STAGES, memory=memory, **options), coder_threads=coder_threads)

    def close(self) -> None:
        """Free the runners, and the backend when it was opened by name; idempotent."""
        self.model.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _z_indexes(self, shape: tuple[int, ...]) -> np.ndarray:
        """z is coded with one table per channel."""
        channels = np.arange(shape[1], dtype=np.int32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray(np.broadcast_to(channels, shape))


class Encoder(_CodecBase):
    """Image (uint8 H x W x 3) -> bitstream bytes."""

    STAGES = (ANALYSIS, HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS)
    #: Most substreams per y pass; 1 writes the single-stream files that ckbd before substreams reads.
    max_substreams: int = substreams.MAX_SUBSTREAMS

    @classmethod
    def open(  # type: ignore[override]  # a keyword more than the base: its **options take any value
            cls, model: ModelPackage | Path | None = None, backend: str | Backend = "onnxruntime", *,
            memory: MemoryBudget | None = None, coder_threads: int = 0,
            max_substreams: int = substreams.MAX_SUBSTREAMS, **options: object) -> Self:
        """:meth:`_CodecBase.open`; ``max_substreams`` caps the substreams of each y pass (1 to 16)."""
        if not 1 <= max_substreams <= substreams.MAX_SUBSTREAMS:
            raise ValueError(f"max_substreams must be 1 to {substreams.MAX_SUBSTREAMS}, got {max_substreams}")
        encoder = super().open(model, backend, memory=memory, coder_threads=coder_threads, **options)
        encoder.max_substreams = max_substreams
        return encoder

    def encode(self, image: np.ndarray) -> bytes:
        return self.encode_detailed(image, estimate=False).data

    def encode_detailed(self, image: np.ndarray, timer: StageTimer | None = None,
                        estimate: bool = True) -> EncodeResult:
        """Encode and return the latents too; ``estimate`` adds the ideal code length (extra work)."""
        timer = timer or NullTimer()
        height, width = check_image(image)
        y_coder, z_coder = self.model.y_coder, self.model.z_coder
        sched = _TwoPassSchedule(self.model, timer)
        out = analyse_image(sched.run, self.model, image)
        y_anchor, y_nonanchor = to_host(out["y_anchor"]), to_host(out["y_nonanchor"])
        z_symbols = np.ascontiguousarray(to_host(out["z_symbols"]), dtype=np.int32)
        z_indexes = self._z_indexes(z_symbols.shape)
        with timer.stage(Z_ENCODE):
            z_payload = z_coder.encode(z_symbols, z_indexes)
        payloads: dict[str, list[bytes]] = {}
        bits = [z_coder.estimate_bits(z_symbols, z_indexes)] if estimate else []

        def coder_for(y: np.ndarray, name: str) -> CodeHalf:
            def code(indexes: np.ndarray, means: np.ndarray) -> np.ndarray:
                symbols = quantize(y, means)
                payloads[name] = substreams.encode_pass(y_coder, symbols, indexes, self.coder_threads,
                                                        limit=self.max_substreams)
                if estimate:
                    bits.append(y_coder.estimate_bits(symbols, indexes))
                return symbols
            return code

        hyper = sched.hyper(z_symbols)
        a_sym, a_hat = sched.half(ANCHOR_PARAMS, {"hyper": hyper}, coder_for(y_anchor, "anchor"),
                                  ANCHOR_ENCODE, y_anchor.shape)
        n_sym, n_hat = sched.half(NONANCHOR_PARAMS, {"hyper": hyper, "anchor_hat": a_hat},
                                  coder_for(y_nonanchor, "nonanchor"), NONANCHOR_ENCODE, y_nonanchor.shape)
        latents = Latents(z_symbols, a_sym, n_sym, a_hat, n_hat)
        anchors, nonanchors, split = substreams.join(payloads["anchor"], payloads["nonanchor"])
        data = bs.pack(bs.Bitstream.build(
            height=height, width=width, arch_id=self.manifest.arch_id, fingerprint_hex=self.manifest.fingerprint,
            N=self.manifest.N, M=self.manifest.M, symbols_crc=latents.crc32(),
            z=z_payload, anchors=anchors, nonanchors=nonanchors,
            entropy_params=self.manifest.entropy_params, substreams=split,
        ))
        return EncodeResult(data, latents, float(sum(bits)) if estimate else None, dict(timer.times_ms))


class Decoder(_CodecBase):
    """Bitstream bytes -> image (uint8 H x W x 3)."""

    STAGES = DECODER_STAGES

    def __init__(self, model: CodecModel, max_pixels: int = bs.DEFAULT_MAX_PIXELS, coder_threads: int = 0) -> None:
        super().__init__(model, coder_threads)
        self.max_pixels = max_pixels

    def decode(self, data: bytes | StreamData) -> np.ndarray:
        return self.decode_detailed(data).image

    def read_header(self, data: bytes | StreamData) -> bs.Bitstream:
        """Parse and validate the container against this model before anything is allocated; a stream
        ``read_stream`` read with this decoder's :meth:`check_header` is parsed and checked once only."""
        if isinstance(data, StreamData):
            if data.checked_by != self.check_header:
                self.check_header(data.header)
            return bs.split_payloads(data.header, data.data)
        stream = bs.unpack(data, max_pixels=self.max_pixels)
        self.check_header(stream.header)
        return stream

    def check_header(self, header: bs.Header) -> None:
        """Refuse a file made for another model, or too large for the memory budget even in tiles;
        ``stream_io`` calls it before reading payloads."""
        m = self.manifest
        bs.check_model(header, m.arch_id, m.fingerprint, m.N, m.M, m.entropy_params)
        plan_synthesis(m.arch, m.N, m.M, header.height, header.width, self.model.memory)

    def decode_detailed(self, data: bytes | StreamData, timer: StageTimer | None = None) -> DecodeResult:
        timer = timer or NullTimer()
        stream = self.read_header(data)
        header = stream.header
        y_coder, threads = self.model.y_coder, self.coder_threads
        sched = _TwoPassSchedule(self.model, timer)

        def reader(payload: bytes) -> CodeHalf:
            return lambda idx, _: substreams.decode_pass(y_coder, payload, idx, header.substreams, threads)

        with timer.stage(Z_DECODE):
            z_symbols = self.model.z_coder.decode(stream.z, self._z_indexes(header.z_shape))
        hyper = sched.hyper(z_symbols)
        try:
            a_sym, a_hat = sched.half(ANCHOR_PARAMS, {"hyper": hyper}, reader(stream.anchors), ANCHOR_DECODE,
                                      header.half_shape)
            n_sym, n_hat = sched.half(NONANCHOR_PARAMS, {"hyper": hyper, "anchor_hat": a_hat},
                                      reader(stream.nonanchors), NONANCHOR_DECODE, header.half_shape)
        except BitstreamError as exc:
            if header.entropy_params == bs.INTEGER_PATH:
                raise
            raise BitstreamError(f"{exc} ({_FLOAT_PATH_HINT})") from None
        latents = Latents(z_symbols, a_sym, n_sym, a_hat, n_hat)
        if latents.crc32() != header.symbols_crc:
            raise BitstreamError(_desync_message(header))
        del hyper  # the largest whole-latent tensor (2M channels): its memory goes to the synthesis tiles
        image = synthesise_image(sched.run, self.model, a_hat, n_hat, header.height, header.width)
        return DecodeResult(image, latents, header, dict(timer.times_ms))


def _desync_message(header: bs.Header) -> str:
    """Why decoded symbols can disagree with the encoder's: corruption, or float-path drift."""
    if header.entropy_params == bs.INTEGER_PATH:
        return ("symbols checksum mismatch: the stream is corrupt (its entropy parameters are exact "
                "integers, so a backend or precision difference cannot cause this)")
    return f"symbols checksum mismatch: the stream is corrupt, or {_FLOAT_PATH_HINT}"


_FLOAT_PATH_HINT = (
    "this float-path stream was coded on a backend, thread count or precision whose float results differ "
    "from this decoder's; decode it with the encoder's configuration, and export models with "
    "--entropy-params integer to make streams portable")


def check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"expected a uint8 H x W x 3 RGB array, got {got}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ImageError(f"empty image ({height}x{width})")
    padded_h, padded_w = bs.padded_size(height, width)  # the limit counts what analysis allocates
    if padded_h * padded_w > bs.DEFAULT_MAX_PIXELS:
        raise ImageError(f"{width}x{height} ({padded_w}x{padded_h} padded) exceeds the "
                         f"{bs.DEFAULT_MAX_PIXELS}-pixel limit")
    return height, width


def to_network_input(image: np.ndarray) -> np.ndarray:
    """Edge-pad to a multiple of 64 (cropped back after decoding) and lay out as float NCHW."""
    return network_input(image)
