"""The CPU entropy coder: indexed integer tables on constriction's range coder.

Why it is fast: coding symbol by symbol with per-symbol model parameters builds a model per
symbol (constriction's QuantizedGaussian decodes ~5 M symbols/s). Here the symbols are grouped by
table index with one sort, and each group is coded as one long i.i.d. run under a
:class:`constriction.stream.model.Categorical` built once per table, so the per-symbol cost is
the range coder step itself. The grouping buffers are reused per thread: on small VMs the page
faults of fresh multi-megabyte arrays cost more than the sort.

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
stream can neither loop nor allocate more than the output array. Any failure inside
constriction, an out-of-bound escape, or unread words left over (beyond the decoder's one word of
lookahead) raises :class:`~ckbd.errors.BitstreamError`; garbage that happens to decode is left to
the container's checksum.

The tables' frequencies are handed to constriction's 24-bit models so that they are reproduced
*exactly* (``probability = freq * 2**(24 - precision)``, see :func:`_categorical`), which makes
:meth:`IndexedCoder.estimate_bits` the ideal length of exactly what is coded.
"""

from __future__ import annotations

import threading
from itertools import pairwise

import constriction
import numpy as np

from ckbd.errors import BitstreamError
from ckbd.runtime.entropy_tables import EntropyTables

#: Largest |value| that may be coded through the escape path.
MAX_MAGNITUDE = 2**24
_MAX_EXP = 24  # Elias-gamma exponents 0.._MAX_EXP
_HEADER_SIZE = 2 * (_MAX_EXP + 1)
_CHUNK = 12  # mantissa bits per uniform symbol (constriction's uniform sizes must be < 2**24)
_MODEL_PRECISION = 24  # constriction's default categorical models use 24-bit probabilities
#: Calls with more symbols than this allocate their grouping buffers (16 bytes a symbol)
#: instead of keeping them per thread.
WORKSPACE_LIMIT = 1 << 22

Runs = list[tuple[int, int, int]]  # (table, start, stop) in grouped order


def _categorical(freqs: np.ndarray, precision: int) -> constriction.stream.model.Categorical:
    """A constriction model whose fixed-point pmf is exactly ``freqs * 2**(24 - precision)``.

    ``Categorical(p, perfect=False)`` quantises with left cumulatives
    ``floor(C_i * (2**24 - n) / sum(p)) + i``. With ``p_i = f_i * 2**(24 - precision) - 1``
    (integers, exact in float64) the scale factor is exactly 1 and the cumulatives come out as
    ``2**(24 - precision) * F_i``: the integer table, bit for bit, on every machine.
    """
    weights = freqs.astype(np.float64) * float(1 << (_MODEL_PRECISION - precision)) - 1.0
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


class _Workspace(threading.local):
    """Per-thread grouping buffers: an intp permutation, a 32-bit key/scratch, and 0..n-1."""

    def __init__(self) -> None:
        self.order = np.empty(0, dtype=np.intp)
        self.key = np.empty(0, dtype=np.uint32)
        self.positions = np.empty(0, dtype=np.uint32)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n > WORKSPACE_LIMIT:
            return np.empty(n, np.intp), np.empty(n, np.uint32), np.arange(n, dtype=np.uint32)
        if self.order.size < n:
            self.order = np.empty(n, dtype=np.intp)
            self.key = np.empty(n, dtype=np.uint32)
            self.positions = np.arange(n, dtype=np.uint32)
        return self.order[:n], self.key[:n], self.positions[:n]


class IndexedCoder:
    """Range-codes int32 values, each under the table picked by its index.

    Thread-safe: the models are immutable and the scratch buffers are per thread.
    """

    def __init__(self, tables: EntropyTables) -> None:
        self.tables = tables
        self._escape = (tables.lengths - 1).astype(np.int32)
        self._offsets = tables.offsets.astype(np.int32)
        self._models = [
            _categorical(tables.row(k), tables.precision) for k in range(tables.num_tables)
        ]
        with np.errstate(divide="ignore"):
            self._neg_log2 = tables.precision - np.log2(tables.freqs.astype(np.float64))
        self._workspace = _Workspace()

    # -- public API -------------------------------------------------------------------------

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
        """Compress ``symbols`` (integer values) coded under tables ``indexes`` (same shape)."""
        symbols, flat_idx = self._check(np.asarray(symbols), indexes)
        if flat_idx.size == 0:
            return b""
        order, runs, grouped = self._group(flat_idx)
        np.take(symbols, order, out=grouped, mode="clip")  # 'raise' would buffer
        encoder = constriction.stream.queue.RangeEncoder()
        escapes = []
        for k, start, stop in runs:
            entries = grouped[start:stop] - self._offsets[k]
            outside = (entries < 0) | (entries >= self._escape[k])
            if outside.any():
                entries[outside] = self._escape[k]
                escapes.append(start + np.flatnonzero(outside))
            encoder.encode(entries, self._models[k])
        if escapes:
            pos = np.concatenate(escapes)
            self._encode_escapes(encoder, grouped[pos], flat_idx[order[pos]])
        return encoder.get_compressed().astype("<u4", copy=False).tobytes()

    def decode(self, data: bytes, indexes: np.ndarray) -> np.ndarray:
        """Invert :meth:`encode`: int32 values of ``indexes``' shape, or :class:`BitstreamError`."""
        shape = np.shape(indexes)
        flat_idx = self._check_indexes(indexes)
        words = self._words(data)
        if flat_idx.size == 0:
            if words.size:
                raise BitstreamError("coded data present where no symbols are expected")
            return np.zeros(shape, dtype=np.int32)
        try:
            values = self._decode_all(words, flat_idx)
        except BitstreamError:
            raise
        except Exception as exc:  # constriction reports corrupt data as various exceptions
            raise BitstreamError(f"corrupt entropy-coded data: {exc}") from None
        return values.reshape(shape)

    def estimate_bits(self, symbols: np.ndarray, indexes: np.ndarray) -> float:
        """Ideal code length ``-sum(log2 p)`` under the integer tables, escape payloads included."""
        symbols, flat_idx = self._check(np.asarray(symbols), indexes)
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

    def _check_indexes(self, indexes: np.ndarray) -> np.ndarray:
        idx = np.asarray(indexes)
        if idx.dtype.kind not in "iu":
            raise BitstreamError(f"indexes must be integers, got {idx.dtype}")
        flat = idx.reshape(-1)
        if flat.dtype == np.int32:  # the hot path: one pass, negatives wrap to huge values
            flat = np.ascontiguousarray(flat)
            bad = bool(np.any(flat.view(np.uint32) >= self.tables.num_tables))
        else:  # check before narrowing, so that wide values cannot wrap into range
            bad = bool(flat.size) and (flat.min() < 0 or flat.max() >= self.tables.num_tables)
        if bad:
            raise BitstreamError(
                f"table index out of range [0, {self.tables.num_tables}): "
                f"{int(flat.min())}..{int(flat.max())}"
            )
        return flat.astype(np.int32, copy=False)

    def _check(self, symbols: np.ndarray, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if symbols.shape != np.shape(indexes):
            raise BitstreamError(f"symbols {symbols.shape} and indexes {np.shape(indexes)} differ")
        if symbols.dtype.kind not in "iu":
            raise BitstreamError(f"symbols must be integers, got {symbols.dtype}")
        flat = symbols.reshape(-1)
        if flat.size and max(-int(flat.min()), int(flat.max())) > MAX_MAGNITUDE:
            raise BitstreamError("a value exceeds the codable magnitude 2**24: refusing to code")
        return np.ascontiguousarray(flat, dtype=np.int32), self._check_indexes(indexes)

    def _group(self, flat_idx: np.ndarray) -> tuple[np.ndarray, Runs, np.ndarray]:
        """Stable grouping: the permutation that lists symbols table by table, each table's run,
        and a free int32 scratch array of the same length (valid until the next call).

        Sorts ``index << bits | position`` keys: they are unique, so any sort algorithm yields
        the one stable order (encoder and decoder agree whatever numpy they run), and numpy's
        vectorised sort of 32-bit keys is about twice as fast as its stable argsort.
        """
        n, num_tables = flat_idx.size, self.tables.num_tables
        bits = max(1, (n - 1).bit_length())
        if bits + max(1, (num_tables - 1).bit_length()) > 32:
            return self._group_wide(flat_idx, bits)
        order, key, positions = self._workspace.get(n)
        np.left_shift(flat_idx.view(np.uint32), np.uint32(bits), out=key)
        key |= positions
        key.sort()
        starts = np.searchsorted(key, np.arange(num_tables, dtype=np.uint32) << np.uint32(bits))
        np.bitwise_and(key, np.uint32((1 << bits) - 1), out=order, casting="unsafe")
        return order, self._runs(starts, n), key.view(np.int32)

    def _group_wide(self, flat_idx: np.ndarray, bits: int) -> tuple[np.ndarray, Runs, np.ndarray]:
        """:meth:`_group` with 64-bit keys, for inputs too large for 32-bit ones."""
        key = flat_idx.astype(np.uint64) << np.uint64(bits)
        key |= np.arange(flat_idx.size, dtype=np.uint64)
        key.sort()
        tables = np.arange(self.tables.num_tables, dtype=np.uint64) << np.uint64(bits)
        starts = np.searchsorted(key, tables)
        order = (key & np.uint64((1 << bits) - 1)).astype(np.intp)
        return order, self._runs(starts, flat_idx.size), np.empty(flat_idx.size, np.int32)

    @staticmethod
    def _runs(starts: np.ndarray, n: int) -> Runs:
        bounds = [*starts.tolist(), n]
        return [(k, a, b) for k, (a, b) in enumerate(pairwise(bounds)) if b > a]

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
        return np.frombuffer(data, dtype="<u4").astype(np.uint32)

    def _decode_all(self, words: np.ndarray, flat_idx: np.ndarray) -> np.ndarray:
        decoder = constriction.stream.queue.RangeDecoder(words)
        order, runs, _ = self._group(flat_idx)
        values = np.empty(flat_idx.size, dtype=np.int32)
        escapes = []
        for k, start, stop in runs:
            entries = decoder.decode(self._models[k], stop - start)
            if entries.max() == self._escape[k]:
                escapes.append(start + np.flatnonzero(entries == self._escape[k]))
            entries += self._offsets[k]
            values[order[start:stop]] = entries
        if escapes:
            at = order[np.concatenate(escapes)]
            values[at] = self._decode_escapes(decoder, flat_idx[at])
        if not decoder.maybe_exhausted():
            raise BitstreamError("corrupt entropy-coded data: unread words after the last symbol")
        return values
