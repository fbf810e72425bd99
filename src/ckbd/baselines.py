"""Torch reference codecs for the two baselines the paper compares the checkerboard with.

These exist to *measure* the context schedule, not to ship: they code with exactly the same
pieces as ckbd (:class:`~ckbd.runtime.coder.IndexedCoder`, the Gaussian scale tables of
:func:`~ckbd.runtime.entropy_tables.gaussian_tables`, one factorized table per z channel, the same
scale-index rule), so that a latency difference between them and ckbd is the schedule's:

``mbt2018`` (:class:`SerialContextCodec`)
    Minnen et al. 2018 with the raster-scan 5x5 type-A context. Decoding is H x W serial steps, as
    in CompressAI's ``JointAutoregressiveHierarchicalPriors._decompress_ar``: the decoded latent
    lives in a zero-padded buffer; at each position the 5x5 window around it is cropped, the masked
    convolution gives that position's context (one output pixel), the 1x1 entropy-parameter
    network gives the M scales and means, and the M symbols are range-decoded before the next
    position can start. The encoder runs the same loop, because ``y_hat = round(y - mean) + mean``
    makes every mean depend on the previous positions' rounding.
``mbt2018-mean`` (:class:`MeanScaleCodec`)
    Minnen et al. 2018 without context: the hyperprior gives all scales and means in one pass and
    the whole latent is coded in one call.

The range coder cannot be paused inside one :meth:`IndexedCoder.decode` call (it needs every
index up front), so the serial codec codes each latent position as its own small payload: what
the serial schedule costs with this coder, paid in rate as one flushed word or so per position
(the baseline bitstreams are for timing, not for RD comparisons).

Bytes use a private container (not ckbd's v1 format)::

    magic "CKBB" | version u8 | arch u8 | N u16 | M u16 | height u32 | width u32
    | z length u32 | z payload | y section

where the y section is the payload itself for ``mbt2018-mean``, and for ``mbt2018`` the h*w
payload lengths in 32-bit words as LEB128 varints (``u32`` byte count first), then the payloads in
raster order. All integers are little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ckbd.errors import BitstreamError, ModelError
from ckbd.models.architectures import HyperpriorModel, MeanScaleHyperprior, SerialContextModel
from ckbd.runtime import bitstream as bs
from ckbd.runtime.codec import check_image, to_network_input
from ckbd.runtime.coder import IndexedCoder, dequantize, quantize
from ckbd.runtime.entropy_tables import default_scale_table, scale_to_index
from ckbd.runtime.profiling import Z_DECODE, Z_ENCODE, NullTimer, StageTimer

SERIAL_DECODE_STAGES = (Z_DECODE, "hyper_synthesis", "context_decode", "latent_synthesis")
SERIAL_ENCODE_STAGES = ("analysis", Z_ENCODE, "hyper_synthesis", "context_encode")
MEAN_DECODE_STAGES = (Z_DECODE, "hyper_synthesis", "params", "y_decode", "latent_synthesis")
MEAN_ENCODE_STAGES = ("analysis", Z_ENCODE, "hyper_synthesis", "params", "y_encode")
#: Extra keys the serial codec records *inside* ``context_*`` (not added to totals): how the
#: serial loop splits between the networks (crop, context conv, entropy parameters, indexes) and
#: the range coder.
SERIAL_BREAKDOWN = ("serial_params", "serial_coding")

MAGIC = b"CKBB"
VERSION = 1
ARCH_IDS = {"mbt2018": 0, "mbt2018-mean": 1}
_HEADER = struct.Struct("<4sBBHHII")
_U32 = struct.Struct("<I")
KERNEL = 5
PAD = KERNEL // 2

#: How the serial loop obtains one position's symbols: (row, col, indexes, means) -> symbols.
PositionCoder = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class BaselineLatents:
    """What both directions must agree on: symbols, decoded latent and the parameters used."""

    z_symbols: np.ndarray  # (1, N, h/4, w/4) int32
    y_symbols: np.ndarray  # (1, M, h, w) int32
    y_hat: np.ndarray  # (1, M, h, w) float32
    means: np.ndarray  # (1, M, h, w) float32, the means each symbol was coded around
    indexes: np.ndarray  # (1, M, h, w) int32, the scale-table index each symbol was coded with


@dataclass
class BaselineEncoded:
    data: bytes
    latents: BaselineLatents
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class BaselineDecoded:
    image: np.ndarray  # uint8 (H, W, 3)
    latents: BaselineLatents
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _Header:
    arch_id: int
    N: int
    M: int
    height: int
    width: int


class BaselineCodec:
    """Shared parts: analysis, z coding, hyper synthesis, synthesis and the container.

    Subclasses implement the y part (:meth:`_encode_y`, :meth:`_decode_y`). Everything runs under
    ``torch.inference_mode`` on the CPU with torch's current thread setting (the benchmark sets it).
    """

    arch: str = ""
    decode_stages: tuple[str, ...] = ()
    encode_stages: tuple[str, ...] = ()

    def __init__(self, model: HyperpriorModel, scale_table: np.ndarray | None = None) -> None:
        from ckbd.export.model_package import build_tables  # tables of any hyperprior model

        if model.config.arch != self.arch:
            raise ModelError(f"{type(self).__name__} codes '{self.arch}' models, not '{model.config.arch}'")
        self.model = model.eval()
        self.N, self.M = model.config.N, model.config.M
        self.scale_table = default_scale_table() if scale_table is None else np.asarray(scale_table, np.float32)
        y_tables, z_tables = build_tables(model, self.scale_table)
        self.y_coder, self.z_coder = IndexedCoder(y_tables), IndexedCoder(z_tables)
        self._medians = model.entropy_bottleneck.medians().detach().reshape(1, -1, 1, 1).clone()

    # -- public API -------------------------------------------------------------------------

    def encode(self, image: np.ndarray) -> bytes:
        return self.encode_detailed(image).data

    def decode(self, data: bytes) -> np.ndarray:
        return self.decode_detailed(data).image

    def encode_detailed(self, image: np.ndarray, timer: StageTimer | None = None) -> BaselineEncoded:
        timer = timer or NullTimer()
        height, width = check_image(image)
        with torch.inference_mode():
            with timer.stage("analysis"):
                y = self.model.g_a(_to_network_input(image))
                z = self.model.h_a(y)
                z_symbols = torch.round(z - self._medians).to(torch.int32).numpy()
            with timer.stage(Z_ENCODE):
                z_payload = self.z_coder.encode(z_symbols, _channel_indexes(z_symbols.shape))
            hyper = self._hyper(z_symbols, timer)
            y_section, latents = self._encode_y(y.numpy(), hyper, timer)
        latents.z_symbols = z_symbols
        header = _HEADER.pack(MAGIC, VERSION, ARCH_IDS[self.arch], self.N, self.M, height, width)
        data = header + _U32.pack(len(z_payload)) + z_payload + y_section
        return BaselineEncoded(data, latents, dict(timer.times_ms))

    def decode_detailed(self, data: bytes, timer: StageTimer | None = None) -> BaselineDecoded:
        timer = timer or NullTimer()
        header, z_payload, y_section = self._parse(data)
        h, w = bs.padded_size(header.height, header.width)
        y_shape = (1, self.M, h // 16, w // 16)
        with torch.inference_mode():
            with timer.stage(Z_DECODE):
                z_shape = (1, self.N, h // 64, w // 64)
                z_symbols = self.z_coder.decode(z_payload, _channel_indexes(z_shape))
            hyper = self._hyper(z_symbols, timer)
            latents = self._decode_y(y_section, hyper, y_shape, timer)
            with timer.stage("latent_synthesis"):
                x = self.model.g_s(torch.from_numpy(latents.y_hat))
                pixels = torch.round(torch.clamp(x, 0.0, 1.0) * 255.0).to(torch.uint8)
                image = pixels[0].permute(1, 2, 0)[: header.height, : header.width].contiguous().numpy()
        latents.z_symbols = z_symbols
        return BaselineDecoded(image, latents, dict(timer.times_ms))

    # -- shared steps -----------------------------------------------------------------------

    def _hyper(self, z_symbols: np.ndarray, timer: StageTimer) -> torch.Tensor:
        with timer.stage("hyper_synthesis"):
            return self.model.h_s(torch.from_numpy(z_symbols).to(torch.float32) + self._medians)

    def _encode_y(self, y: np.ndarray, hyper: torch.Tensor, timer: StageTimer) -> tuple[bytes, BaselineLatents]:
        raise NotImplementedError

    def _decode_y(self, section: bytes, hyper: torch.Tensor, y_shape: tuple[int, int, int, int],
                  timer: StageTimer) -> BaselineLatents:
        raise NotImplementedError

    def _parse(self, data: bytes) -> tuple[_Header, bytes, bytes]:
        """Header fields checked against this codec before anything is allocated."""
        if len(data) < _HEADER.size + _U32.size:
            raise BitstreamError("baseline stream too short")
        magic, version, arch_id, N, M, height, width = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise BitstreamError("not a baseline stream of this version")
        if (arch_id, N, M) != (ARCH_IDS[self.arch], self.N, self.M):
            raise BitstreamError(f"stream is for arch id {arch_id} N={N} M={M}, "
                                 f"not {self.arch} N={self.N} M={self.M}")
        if not 1 <= height * width <= bs.DEFAULT_MAX_PIXELS:
            raise BitstreamError(f"invalid image size {width}x{height}")
        (z_len,) = _U32.unpack_from(data, _HEADER.size)
        start = _HEADER.size + _U32.size
        if start + z_len > len(data):
            raise BitstreamError("truncated baseline stream")
        return _Header(arch_id, N, M, height, width), data[start: start + z_len], data[start + z_len:]


class MeanScaleCodec(BaselineCodec):
    """``mbt2018-mean``: all parameters from the hyperprior, the latent coded in one call."""

    arch = "mbt2018-mean"
    decode_stages = MEAN_DECODE_STAGES
    encode_stages = MEAN_ENCODE_STAGES

    def _params(self, hyper: torch.Tensor, timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        with timer.stage("params"):
            scales, means = self.model.y_params(hyper, hyper)  # the mean-scale prior ignores y
            return scale_to_index(scales.numpy(), self.scale_table), means.numpy()

    def _encode_y(self, y: np.ndarray, hyper: torch.Tensor, timer: StageTimer) -> tuple[bytes, BaselineLatents]:
        indexes, means = self._params(hyper, timer)
        with timer.stage("y_encode"):
            symbols = quantize(y, means)
            payload = self.y_coder.encode(symbols, indexes)
        y_hat = dequantize(symbols, means)
        return payload, BaselineLatents(np.empty(0, np.int32), symbols, y_hat, means, indexes)

    def _decode_y(self, section: bytes, hyper: torch.Tensor, y_shape: tuple[int, int, int, int],
                  timer: StageTimer) -> BaselineLatents:
        indexes, means = self._params(hyper, timer)
        if indexes.shape != y_shape:
            raise ModelError(f"hyper synthesis gave parameters of shape {indexes.shape}, expected {y_shape}")
        with timer.stage("y_decode"):
            symbols = self.y_coder.decode(section, indexes)
        y_hat = dequantize(symbols, means)
        return BaselineLatents(np.empty(0, np.int32), symbols, y_hat, means, indexes)


class SerialContextCodec(BaselineCodec):
    """``mbt2018``: raster-scan context, one latent position at a time (see the module doc)."""

    arch = "mbt2018"
    decode_stages = SERIAL_DECODE_STAGES
    encode_stages = SERIAL_ENCODE_STAGES

    def __init__(self, model: HyperpriorModel, scale_table: np.ndarray | None = None) -> None:
        super().__init__(model, scale_table)
        assert isinstance(model, SerialContextModel)
        self.serial_model = model

    def _position_params(self, y_pad: torch.Tensor, hyper: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(indexes, means) of the M symbols at (i, j): masked 5x5 conv on the cropped window,
        then the 1x1 entropy-parameter network on that one pixel (CompressAI's recipe)."""
        crop = y_pad[:, :, i: i + KERNEL, j: j + KERNEL]
        ctx = F.conv2d(crop, weight, bias)
        params = self.serial_model.entropy_parameters(torch.cat((hyper[:, :, i: i + 1, j: j + 1], ctx), dim=1))
        scales, means = params.reshape(2, self.M)  # (scales, means) chunks, as y_params
        return scale_to_index(scales.numpy(), self.scale_table), means.numpy()

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        conv = self.serial_model.context_prediction
        return conv.masked_weight().contiguous(), conv.bias

    def _serial(self, hyper: torch.Tensor, y_shape: tuple[int, ...], stage: str, timer: StageTimer,
                code: PositionCoder) -> BaselineLatents:
        """The raster loop both directions share; ``code`` yields each position's symbols."""
        _, M, h, w = y_shape
        if tuple(hyper.shape) != (1, 2 * M, h, w):
            raise ModelError(f"hyper synthesis gave shape {tuple(hyper.shape)}, expected {(1, 2 * M, h, w)}")
        y_pad = torch.zeros((1, M, h + 2 * PAD, w + 2 * PAD))
        symbols = np.empty((h, w, M), np.int32)
        means_all = np.empty((h, w, M), np.float32)
        indexes_all = np.empty((h, w, M), np.int32)
        weight, bias = self._weights()
        hyper = hyper.contiguous()
        with timer.stage(stage):
            for i in range(h):
                for j in range(w):
                    with timer.stage("serial_params"):
                        indexes, means = self._position_params(y_pad, hyper, weight, bias, i, j)
                    with timer.stage("serial_coding"):
                        sym = code(i, j, indexes, means)
                    value = dequantize(sym, means)
                    y_pad[0, :, i + PAD, j + PAD] = torch.from_numpy(value)
                    symbols[i, j], means_all[i, j], indexes_all[i, j] = sym, means, indexes
        y_hat = y_pad[:, :, PAD: PAD + h, PAD: PAD + w].contiguous().numpy()

        def nchw(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.transpose(2, 0, 1)[None])

        return BaselineLatents(np.empty(0, np.int32), nchw(symbols), y_hat, nchw(means_all), nchw(indexes_all))

    def _encode_y(self, y: np.ndarray, hyper: torch.Tensor, timer: StageTimer) -> tuple[bytes, BaselineLatents]:
        payloads: list[bytes] = []

        def code(i: int, j: int, indexes: np.ndarray, means: np.ndarray) -> np.ndarray:
            sym = quantize(y[0, :, i, j], means)
            payloads.append(self.y_coder.encode(sym, indexes))
            return sym

        latents = self._serial(hyper, y.shape, "context_encode", timer, code)
        lengths = _varints([len(p) // 4 for p in payloads])
        return _U32.pack(len(lengths)) + lengths + b"".join(payloads), latents

    def _decode_y(self, section: bytes, hyper: torch.Tensor, y_shape: tuple[int, int, int, int],
                  timer: StageTimer) -> BaselineLatents:
        _, _, h, w = y_shape
        chunks = _split_chunks(section, h * w)
        position = iter(chunks)

        def code(i: int, j: int, indexes: np.ndarray, means: np.ndarray) -> np.ndarray:
            return self.y_coder.decode(next(position), indexes)

        return self._serial(hyper, y_shape, "context_decode", timer, code)


CODECS: dict[str, type[BaselineCodec]] = {"mbt2018": SerialContextCodec, "mbt2018-mean": MeanScaleCodec}


def baseline_codec(model: HyperpriorModel, scale_table: np.ndarray | None = None) -> BaselineCodec:
    """The reference codec for a baseline model (``mbt2018`` or ``mbt2018-mean``)."""
    if not isinstance(model, (SerialContextModel, MeanScaleHyperprior)) or model.config.arch not in CODECS:
        raise ModelError(f"no baseline codec for '{model.config.arch}'; baselines are {', '.join(CODECS)}")
    return CODECS[model.config.arch](model, scale_table)


# -- helpers --------------------------------------------------------------------------------


def _to_network_input(image: np.ndarray) -> torch.Tensor:
    """ckbd's own edge padding to a multiple of 64, so every codec sees the same latent size."""
    return torch.from_numpy(to_network_input(image))


def _channel_indexes(shape: tuple[int, ...]) -> np.ndarray:
    """z is coded with one table per channel."""
    channels = np.arange(shape[1], dtype=np.int32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(np.broadcast_to(channels, shape))


def _varints(values: list[int]) -> bytes:
    """LEB128: 7 bits a byte, high bit set on all but the last byte of a value."""
    out = bytearray()
    for value in values:
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def _read_varints(data: bytes, count: int) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
        elif shift > 28:
            raise BitstreamError("corrupt chunk length")
    if len(values) != count or shift:
        raise BitstreamError(f"expected {count} chunk lengths, found {len(values)}")
    return values


def _split_chunks(section: bytes, count: int) -> list[bytes]:
    """The serial stream's per-position payloads, checked to fill the section exactly."""
    if len(section) < _U32.size:
        raise BitstreamError("truncated serial stream")
    (n_bytes,) = _U32.unpack_from(section)
    words = _read_varints(section[_U32.size: _U32.size + n_bytes], count)
    offset = _U32.size + n_bytes
    chunks = []
    for n in words:
        chunks.append(section[offset: offset + 4 * n])
        offset += 4 * n
    if offset != len(section):
        raise BitstreamError("serial stream payload sizes do not add up")
    return chunks
