"""The CPU entropy coder: indexed integer tables on constriction's range coder.

Why it is fast: coding symbol by symbol with per-symbol model parameters builds a model per
symbol (constriction's QuantizedGaussian decodes ~5 M symbols/s). Here the symbols are grouped by
table index with one stable counting sort (:mod:`ckbd.runtime.grouping`), and each group is coded
as one long i.i.d. run under a :class:`constriction.stream.model.Categorical` built once per
table, so the per-symbol cost is the range coder step itself.

Stream layout (one ``constriction.stream.queue.RangeEncoder``, a queue: decode order is encode
order), serialised as little-endian uint32 words:

1. the table *entries* of all symbols, group by group in increasing index order, each group in
   the original (C) order of its symbols; entry ``e`` of table ``k`` is the value
   ``offsets[k] + e``, and the last entry ``lengths[k] - 1`` is the escape;
2. for every escaped symbol (same grouped order): a header ``sign * 25 + n`` under a uniform
   model over 50 symbols, where the value lies ``d >= 0`` beyond the support (above it for
   sign 0, below for sign 1) and ``n = floor(log2(d + 1))`` (Elias-gamma exponent, 0..24);
3. the low ``min(n, 12)`` mantissa bits of ``d + 1`` of every escape with ``n >= 1``;
4. the high ``n - 12`` mantissa bits of every escape with ``n >= 13``.

Escaped values are bounded by ``|value| <= MAX_MAGNITUDE`` (2**24) on both sides, so a corrupt
stream can neither loop nor allocate more than the output array. Words outside the
coder's range, an out-of-bound escape, or unread words left over (beyond the decoder's one word of
lookahead) raise :class:`~ckbd.errors.BitstreamError`; garbage that happens to decode is left to
the container's checksum.

Two implementations write these words: the compiled coder (:mod:`ckbd.runtime.rangecoder`, which
releases the GIL) where it is built, and constriction, which defines the format, everywhere. They
produce the same bytes and raise the same errors (tests compare them). Both also code one row band
of a pass (:meth:`IndexedCoder.encode_band`), the unit of :mod:`ckbd.runtime.substreams`.

The tables' frequencies are handed to constriction's 24-bit models so that they are reproduced
*exactly* (``probability = freq * 2**(24 - probability_bits)``, see :func:`_categorical`), which makes
:meth:`IndexedCoder.estimate_bits` the ideal length of exactly what is coded.
"""

from __future__ import annotations

from collections.abc import Sequence

import constriction
import numpy as np

from ckbd.errors import BitstreamError
from ckbd.runtime import grouping, rangecoder
from ckbd.runtime.entropy_tables import EntropyTables

#: Largest |value| that may be coded through the escape path.
MAX_MAGNITUDE = 2**24
_MAX_EXP = 24  # Elias-gamma exponents 0.._MAX_EXP
_HEADER_SIZE = 2 * (_MAX_EXP + 1)
_CHUNK = 12  # mantissa bits per uniform symbol (constriction's uniform sizes must be < 2**24)
_MODEL_PRECISION = 24  # constriction's default categorical models use 24-bit probabilities
_ESCAPED = np.iinfo(np.int32).min  # marks escapes while decoding: no value is that far out


def quantize(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The symbols of ``values`` coded around ``offsets``: ``rint(values - offsets)`` as int32.

    The one home of the rule (tensorflow-compression's coder takes the offset the same way): the
    encoder codes these, and every decoder rebuilds the latent with :func:`dequantize`.
    """
    return np.rint(np.asarray(values) - offsets).astype(np.int32)


def dequantize(symbols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The decoded latent ``symbols + offsets`` in float32: the same numpy operation on both sides,
    so an encoder's reconstruction and a decoder's are bit-identical."""
    return np.asarray(symbols).astype(np.float32) + np.asarray(offsets, dtype=np.float32)


def _categorical(freqs: np.ndarray, probability_bits: int) -> constriction.stream.model.Categorical:
    """A constriction model whose fixed-point pmf is exactly ``freqs * 2**(24 - probability_bits)``.

    ``Categorical(p, perfect=False)`` quantises with left cumulatives
    ``floor(C_i * (2**24 - n) / sum(p)) + i``. With ``p_i = f_i * 2**(24 - probability_bits) - 1``
    (integers, exact in float64) the scale factor is exactly 1 and the cumulatives come out as
    ``2**(24 - probability_bits) * F_i``: the integer table, bit for bit, on every machine.
    """
    weights = freqs.astype(np.float64) * float(1 << (_MODEL_PRECISION - probability_bits)) - 1.0
    return constriction.stream.model.Categorical(weights, perfect=False)


def _mantissa_chunks(n: np.ndarray) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """(which escapes, bit shift, uniform sizes) of the low and the high mantissa chunk.

    The low chunk holds ``min(n, 12)`` bits of escapes with ``n >= 1``, the high chunk the
    remaining ``n - 12`` bits of escapes with ``n > 12``; empty chunks are left out.
    """
    chunks = []
    for shift in (0, _CHUNK):
        part = n > shift
        if np.any(part):
            width = np.minimum(n[part] - shift, _CHUNK)
            chunks.append((part, shift, np.left_shift(1, width).astype(np.int32)))
    return chunks


class IndexedCoder:
    """Range-codes int32 values, each under the table picked by its index.

    Thread-safe: the models are immutable and the grouping buffers are per thread. ``compiled=False``
    codes through constriction even where the compiled coder is built (the reference, for tests).
    """

    def __init__(self, tables: EntropyTables, compiled: bool = True) -> None:
        self.tables = tables
        module = rangecoder.compiled if compiled else None
        self._compiled = None if module is None else rangecoder.CompiledTables(tables, module)
        self._escape = (tables.lengths - 1).astype(np.int32)
        self._offsets = tables.offsets.astype(np.int32)
        self._models = [] if self._compiled else [  # constriction's models, for its path only
            _categorical(tables.row(k), tables.probability_bits) for k in range(tables.num_tables)
        ]
        with np.errstate(divide="ignore"):
            self._neg_log2 = tables.probability_bits - np.log2(tables.freqs.astype(np.float64))
        probs = tables.freqs / float(1 << tables.probability_bits)
        self._entropy = (probs * np.where(tables.freqs > 0, self._neg_log2, 0.0)).sum(axis=1)  # bits/symbol

    @property
    def releases_gil(self) -> bool:
        """Whether calls run on the compiled coder, so that threads code in parallel."""
        return self._compiled is not None

    # -- public API -------------------------------------------------------------------------

    def encode(self, values: np.ndarray, indexes: np.ndarray, offsets: np.ndarray | None = None) -> bytes:
        """Compress ``values`` coded under tables ``indexes`` (same shape).

        With ``offsets`` (e.g. the predicted means), the coded symbols are ``quantize(values,
        offsets)`` and :meth:`decode` with the same offsets returns ``dequantize`` of them; without,
        ``values`` must already be integers.
        """
        symbols = np.asarray(values) if offsets is None else quantize(values, offsets)
        symbols, flat_idx = self.check(symbols, indexes)
        if self._compiled is not None:
            return self._compiled.encode(symbols.reshape(1, 1, -1), flat_idx.reshape(1, 1, -1), (0, 1))
        return self._encode_reference(symbols, flat_idx)

    def encode_band(self, symbols: np.ndarray, indexes: np.ndarray, band: tuple[int, int]) -> bytes:
        """:meth:`encode` of rows ``band`` of (outer, rows, width) arrays that :meth:`check` passed."""
        if self._compiled is not None:
            return self._compiled.encode(symbols, indexes, band)
        r0, r1 = band
        return self._encode_reference(symbols[:, r0:r1].ravel(), indexes[:, r0:r1].ravel())

    def decode_bands(self, parts: Sequence[bytes], indexes: np.ndarray, out: np.ndarray,
                     bands: Sequence[tuple[int, int]]) -> None:
        """Decode each of :meth:`encode_band`'s ``parts`` into its rows ``bands`` of the int32 ``out``;
        a failure is that of the first band that fails."""
        if self._compiled is None:
            for data, (r0, r1) in zip(parts, bands):
                out[:, r0:r1] = self._decode_symbols(data, indexes[:, r0:r1])
            return
        for data, (r0, r1) in zip(parts, bands):  # the checks the single-stream path makes
            self._nothing_to_decode(self._words(data), indexes[:, r0:r1].size)
        self._compiled.decode(parts, indexes, out, bands)

    def expected_bytes(self, indexes: np.ndarray) -> float:
        """Size the tables' own entropies predict for symbols under flat int32 ``indexes`` (checked)."""
        counts = np.bincount(indexes, minlength=self.tables.num_tables)
        return float(counts @ self._entropy) / 8

    def _encode_reference(self, symbols: np.ndarray, flat_idx: np.ndarray) -> bytes:
        if flat_idx.size == 0:
            return b""
        groups = grouping.group(flat_idx, self.tables.num_tables)
        grouped = grouping.scratch(flat_idx.size)
        groups.split(symbols, grouped)
        encoder = constriction.stream.queue.RangeEncoder()
        escaped_values, escaped_tables = [], []
        for k, start, stop in groups.runs():
            entries = grouped[start:stop] - self._offsets[k]
            outside = (entries < 0) | (entries >= self._escape[k])
            if outside.any():
                escaped_values.append(grouped[start:stop][outside])
                escaped_tables.append(np.full(escaped_values[-1].size, k, dtype=np.int32))
                entries[outside] = self._escape[k]
            encoder.encode(entries, self._models[k])
        if escaped_values:
            self._encode_escapes(encoder, np.concatenate(escaped_values), np.concatenate(escaped_tables))
        return encoder.get_compressed().astype("<u4", copy=False).tobytes()

    def decode(self, data: bytes, indexes: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """Invert :meth:`encode`, or raise :class:`BitstreamError`: int32 symbols of ``indexes``'
        shape, or with ``offsets`` the float32 reconstruction ``dequantize(symbols, offsets)``."""
        symbols = self._decode_symbols(data, indexes)
        return symbols if offsets is None else dequantize(symbols, offsets)

    def _decode_symbols(self, data: bytes, indexes: np.ndarray) -> np.ndarray:
        shape = np.shape(indexes)
        flat_idx = self.check_indexes(indexes)
        words = self._words(data)
        if self._nothing_to_decode(words, flat_idx.size):
            return np.zeros(shape, dtype=np.int32)
        if self._compiled is not None:
            values = np.empty(flat_idx.size, dtype=np.int32)
            self._compiled.decode([data], flat_idx.reshape(1, 1, -1), values.reshape(1, 1, -1), [(0, 1)])
            return values.reshape(shape)
        try:
            values = self._decode_all(words, flat_idx)
        except BitstreamError:
            raise
        except Exception:  # constriction's only decoding error: words outside the coder's range
            raise BitstreamError(rangecoder.INVALID_DATA) from None
        return values.reshape(shape)

    @staticmethod
    def _nothing_to_decode(words: np.ndarray, num_symbols: int) -> bool:
        if num_symbols:
            return False
        if words.size:
            raise BitstreamError("coded data present where no symbols are expected")
        return True

    def estimate_bits(self, symbols: np.ndarray, indexes: np.ndarray) -> float:
        """Ideal code length ``-sum(log2 p)`` under the integer tables, escape payloads included."""
        symbols, flat_idx = self.check(np.asarray(symbols), indexes)
        entries = symbols - self._offsets[flat_idx]
        escape = self._escape[flat_idx]
        escaped = (entries < 0) | (entries >= escape)
        entries = np.where(escaped, escape, entries)
        bits = float(self._neg_log2[flat_idx, entries].sum())
        if np.any(escaped):
            _, n, _ = self._escape_parts(symbols[escaped], flat_idx[escaped])
            bits += float(np.log2(_HEADER_SIZE) * n.size + n.sum())
        return bits

    # -- validation and grouping ------------------------------------------------------------

    def check_indexes(self, indexes: np.ndarray) -> np.ndarray:
        """Flat C-contiguous int32 indexes, or :class:`BitstreamError` for any outside the tables."""
        idx = np.asarray(indexes)
        if idx.dtype.kind not in "iu":
            raise BitstreamError(f"indexes must be integers, got {idx.dtype}")
        flat = idx.reshape(-1)
        if flat.dtype == np.int32:  # the hot path: one pass, negatives wrap to huge values
            flat = np.ascontiguousarray(flat)
            bad = bool(flat.size) and int(flat.view(np.uint32).max()) >= self.tables.num_tables
        else:  # check before narrowing, so that wide values cannot wrap into range
            bad = bool(flat.size) and (flat.min() < 0 or flat.max() >= self.tables.num_tables)
        if bad:
            raise BitstreamError(
                f"table index out of range [0, {self.tables.num_tables}): "
                f"{int(flat.min())}..{int(flat.max())}"
            )
        return flat.astype(np.int32, copy=False)

    def check(self, symbols: np.ndarray, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 symbols and indexes, refusing what cannot be coded (:class:`BitstreamError`)."""
        if symbols.shape != np.shape(indexes):
            raise BitstreamError(f"symbols {symbols.shape} and indexes {np.shape(indexes)} differ")
        if symbols.dtype.kind not in "iu":
            raise BitstreamError(f"symbols must be integers, got {symbols.dtype}")
        flat = symbols.reshape(-1)
        if flat.size and max(-int(flat.min()), int(flat.max())) > MAX_MAGNITUDE:
            raise BitstreamError("a value exceeds the codable magnitude 2**24: refusing to code")
        return np.ascontiguousarray(flat, dtype=np.int32), self.check_indexes(indexes)

    # -- escapes ----------------------------------------------------------------------------

    def _escape_parts(
        self, values: np.ndarray, idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sign, Elias-gamma exponent and mantissa of each escaped value's overflow."""
        v = values.astype(np.int64)
        low = self._offsets[idx].astype(np.int64)
        high = low + self._escape[idx] - 1  # largest in-support value
        sign = (v < low).astype(np.int64)
        gamma = np.where(sign == 1, low - v, v - high)  # d + 1 >= 1
        if gamma.max() >= 1 << (_MAX_EXP + 1):
            raise BitstreamError("an escaped value lies too far outside its table's support")
        n = np.frexp(gamma.astype(np.float64))[1].astype(np.int64) - 1  # exact: gamma < 2**53
        return sign, n, gamma - np.left_shift(1, n)

    def _encode_escapes(
        self, encoder: constriction.stream.queue.RangeEncoder, values: np.ndarray, idx: np.ndarray
    ) -> None:
        model = constriction.stream.model
        sign, n, mantissa = self._escape_parts(values, idx)
        header = (sign * (_MAX_EXP + 1) + n).astype(np.int32)
        encoder.encode(header, model.Uniform(_HEADER_SIZE))
        for part, shift, sizes in _mantissa_chunks(n):
            chunk = (mantissa[part] >> shift) & ((1 << _CHUNK) - 1)
            encoder.encode(chunk.astype(np.int32), model.Uniform(), sizes)

    def _decode_escapes(
        self, decoder: constriction.stream.queue.RangeDecoder, idx: np.ndarray
    ) -> np.ndarray:
        model = constriction.stream.model
        header = decoder.decode(model.Uniform(_HEADER_SIZE), idx.size).astype(np.int64)
        sign, n = header // (_MAX_EXP + 1), header % (_MAX_EXP + 1)
        mantissa = np.zeros(idx.size, dtype=np.int64)
        for part, shift, sizes in _mantissa_chunks(n):
            chunk = decoder.decode(model.Uniform(), sizes)
            mantissa[part] |= chunk.astype(np.int64) << shift
        gamma = np.left_shift(1, n) + mantissa
        low = self._offsets[idx].astype(np.int64)
        high = low + self._escape[idx] - 1
        values = np.where(sign == 1, low - gamma, high + gamma)
        if np.abs(values).max() > MAX_MAGNITUDE:
            raise BitstreamError("corrupt entropy-coded data: escaped value out of bounds")
        return values.astype(np.int32)

    # -- decoding ---------------------------------------------------------------------------

    @staticmethod
    def _words(data: bytes) -> np.ndarray:
        if len(data) % 4:
            raise BitstreamError(f"entropy-coded data is not whole 32-bit words ({len(data)} bytes)")
        return np.frombuffer(data, dtype="<u4").astype(np.uint32, copy=False)  # a view where native

    def _decode_all(self, words: np.ndarray, flat_idx: np.ndarray) -> np.ndarray:
        decoder = constriction.stream.queue.RangeDecoder(words)
        groups = grouping.group(flat_idx, self.tables.num_tables)
        grouped = grouping.scratch(flat_idx.size)
        escaped = False
        for k, start, stop in groups.runs():
            entries = decoder.decode(self._models[k], stop - start)
            out = grouped[start:stop]
            np.add(entries, self._offsets[k], out=out)
            if entries.max() == self._escape[k]:
                out[entries == self._escape[k]] = _ESCAPED
                escaped = True
        values = np.empty(flat_idx.size, dtype=np.int32)
        groups.merge(grouped, values)
        if escaped:  # the stream lists the escapes in grouped order: by table, then position
            at = np.flatnonzero(values == _ESCAPED)
            at = at[np.argsort(flat_idx[at], kind="stable")]
            values[at] = self._decode_escapes(decoder, flat_idx[at])
        if not decoder.maybe_exhausted():
            raise BitstreamError("corrupt entropy-coded data: unread words after the last symbol")
        return values
