"""The compiled range coder against constriction, the definition of the stream format.

Random tables (every probability precision), random symbols with escapes, row bands of 3-d arrays,
and hostile streams: the compiled coder must write the same bytes, decode the same symbols and fail
with the same errors. The codec-level streams (tests/data) are compared in test_substreams_codec.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckbd.errors import BitstreamError
from ckbd.runtime import rangecoder
from ckbd.runtime.coder import MAX_MAGNITUDE, IndexedCoder
from ckbd.runtime.entropy_tables import EntropyTables

pytestmark = pytest.mark.skipif(rangecoder.compiled is None, reason="the compiled range coder is not built here")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_tables(rng: np.random.Generator, bits: int, num_tables: int, max_length: int = 300) -> EntropyTables:
    """Tables of 2..max_length entries, every frequency >= 1, each summing to 2**bits."""
    lengths = rng.integers(2, min(max_length, 1 << bits) + 1, num_tables).astype(np.int32)
    freqs = np.zeros((num_tables, int(lengths.max())), np.uint32)
    for k, length in enumerate(lengths):
        shape = rng.dirichlet(np.full(length, rng.choice([0.1, 1.0, 10.0])))
        freqs[k, :length] = 1 + rng.multinomial((1 << bits) - length, shape)
    return EntropyTables(freqs, lengths, rng.integers(-1000, 1000, num_tables).astype(np.int32), bits)


def random_symbols(rng: np.random.Generator, tables: EntropyTables, idx: np.ndarray,
                   escape_rate: float) -> np.ndarray:
    """Values inside each table's support, a share ``escape_rate`` of them escaped, some far out."""
    support = (tables.lengths - 1)[idx]
    values = tables.offsets[idx] + (rng.random(idx.shape) * support).astype(np.int32)
    escaped = rng.random(idx.shape) < escape_rate
    far = rng.integers(-MAX_MAGNITUDE, MAX_MAGNITUDE + 1, idx.shape)
    near = np.where(rng.random(idx.shape) < 0.5, tables.offsets[idx] - 1 - rng.integers(0, 5000, idx.shape),
                    tables.offsets[idx] + support + rng.integers(0, 5000, idx.shape))
    values = np.where(escaped, np.where(rng.random(idx.shape) < 0.3, far, near), values)
    return values.astype(np.int32)


def pair(tables: EntropyTables) -> tuple[IndexedCoder, IndexedCoder]:
    return IndexedCoder(tables, compiled=True), IndexedCoder(tables, compiled=False)


def outcome(coder: IndexedCoder, data: bytes, idx: np.ndarray) -> np.ndarray | str:
    """The decoded symbols, or the error's message."""
    try:
        return coder.decode(data, idx)
    except BitstreamError as exc:
        return f"BitstreamError: {exc}"


def same_outcome(fast: IndexedCoder, ref: IndexedCoder, data: bytes, idx: np.ndarray) -> None:
    a, b = outcome(fast, data, idx), outcome(ref, data, idx)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 24), num_tables=st.integers(1, 6),
       n=st.integers(0, 4000), escape_rate=st.sampled_from([0.0, 0.002, 0.05, 0.5, 1.0]))
def test_same_words_as_constriction(seed: int, bits: int, num_tables: int, n: int, escape_rate: float) -> None:
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, bits, num_tables)
    fast, ref = pair(tables)
    idx = rng.integers(0, num_tables, n).astype(np.int32)
    values = random_symbols(rng, tables, idx, escape_rate)
    data = ref.encode(values, idx)
    assert fast.encode(values, idx) == data
    np.testing.assert_array_equal(fast.decode(data, idx), values)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([4, 12, 16, 24]), outer=st.integers(1, 4),
       rows=st.integers(1, 9), width=st.integers(1, 7))
def test_bands_are_the_streams_of_their_rows(seed: int, bits: int, outer: int, rows: int, width: int) -> None:
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, bits, 4)
    fast, ref = pair(tables)
    idx = rng.integers(0, 4, (outer, rows, width)).astype(np.int32)
    values = random_symbols(rng, tables, idx, 0.1)
    r0 = int(rng.integers(0, rows + 1))
    r1 = int(rng.integers(r0, rows + 1))
    band = np.ascontiguousarray(values[:, r0:r1]), np.ascontiguousarray(idx[:, r0:r1])
    data = ref.encode(*band)
    for coder in (fast, ref):
        assert coder.encode_band(values, idx, (r0, r1)) == data
        out = np.full(values.shape, 7, np.int32)
        coder.decode_bands([data], idx, out, [(r0, r1)])
        np.testing.assert_array_equal(out[:, r0:r1], values[:, r0:r1])
        assert np.all(np.delete(out, np.s_[r0:r1], axis=1) == 7)  # nothing outside the band is written


def damage(rng: np.random.Generator, data: bytes) -> bytes:
    """A genuine stream cut, extended, with bits flipped, or replaced by random words or by ones (which
    leave the coder's range at once, so that a lane fails while the other goes on)."""
    kind = int(rng.integers(4))
    if kind == 0:
        return rng.integers(0, 2**32, int(rng.integers(0, 12)), dtype=np.uint32).tobytes()
    if kind == 3:
        return b"\xff" * 4 * int(rng.integers(2, 6))
    broken = bytearray(data)
    if kind == 1:
        broken = broken[: 4 * int(rng.integers(0, len(broken) // 4 + 1))] + b"\0" * 4 * int(rng.integers(0, 3))
    for pos in rng.integers(0, max(len(broken), 1), 2 if broken else 0):
        broken[pos] ^= 1 << int(rng.integers(8))
    return bytes(broken)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([4, 12, 24]), count=st.integers(1, 7),
       damaged=st.lists(st.integers(0, 6), max_size=2))
def test_bands_decoded_together_match_one_at_a_time(seed: int, bits: int, count: int, damaged: list[int]) -> None:
    """One call decodes its bands two at a time, in alternation: the same symbols as decoding each band
    by itself, and the error of the first band that fails, whichever of a pair it is."""
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, bits, 5, max_length=60)
    fast = IndexedCoder(tables)
    outer, rows, width = int(rng.integers(1, 4)), int(rng.integers(count, 3 * count + 1)), int(rng.integers(1, 9))
    idx = rng.integers(0, 5, (outer, rows, width)).astype(np.int32)
    idx[:, :, : width // 2] = idx[:, :, :1]  # runs of one table, as latents have, beside random ones
    values = random_symbols(rng, tables, idx, 0.05)
    cuts = [(j * rows // count, (j + 1) * rows // count) for j in range(count)]
    parts = [fast.encode_band(values, idx, cut) for cut in cuts]
    for j in damaged:
        if j < count:
            parts[j] = damage(rng, parts[j])
    alone: np.ndarray | str = np.zeros_like(values)
    for data, cut in zip(parts, cuts):
        try:
            fast.decode_bands([data], idx, alone, [cut])  # type: ignore[arg-type]
        except BitstreamError as exc:
            alone = str(exc)
            break
    together = np.zeros_like(values)
    try:
        fast.decode_bands(parts, idx, together, cuts)
    except BitstreamError as exc:
        assert str(exc) == alone
    else:
        assert not isinstance(alone, str)
        np.testing.assert_array_equal(together, alone)
        if not any(j < count for j in damaged):  # a damaged stream may still decode, to other symbols
            np.testing.assert_array_equal(together, values)


def test_the_first_failing_band_is_reported_whichever_lane_fails_first() -> None:
    """A pair's second lane failing early must not hide the first lane's later failure, nor stop it."""
    rng = np.random.default_rng(3)
    tables = random_tables(rng, 16, 3)
    coder = IndexedCoder(tables)
    idx = rng.integers(0, 3, (1, 4, 500)).astype(np.int32)
    values = random_symbols(rng, tables, idx, 0.0)
    cuts = [(0, 1), (1, 2), (2, 3), (3, 4)]
    parts = [coder.encode_band(values, idx, cut) for cut in cuts]
    unread, invalid = parts[0] + b"\0" * 8, b"\xff" * 16  # fails at the end / at the first symbol
    for bands, message in ([[unread, invalid, *parts[2:]], "unread words"],
                           [[parts[0], invalid, unread, parts[3]], "outside the coder's range"],
                           [[*parts[:3], invalid], "outside the coder's range"]):
        with pytest.raises(BitstreamError, match=message):
            coder.decode_bands(bands, idx, np.zeros_like(idx), cuts)
    out = np.zeros_like(idx)
    coder.decode_bands(parts, idx, out, cuts)
    np.testing.assert_array_equal(out, values)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 24), n=st.integers(0, 600),
       words=st.integers(0, 80))
def test_hostile_words_give_the_same_symbols_or_errors(seed: int, bits: int, n: int, words: int) -> None:
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, bits, 3, max_length=40)
    fast, ref = pair(tables)
    idx = rng.integers(0, 3, n).astype(np.int32)
    kind = rng.integers(3)
    if kind == 0:  # random words, or only ones: outside the coder's range sooner or later
        data = rng.integers(0, 2**32, words, dtype=np.uint32).tobytes() if rng.random() < 0.7 else b"\xff" * 4 * words
    else:  # a genuine stream, cut, extended or with bits flipped
        data = bytearray(ref.encode(random_symbols(rng, tables, idx, 0.2), idx))
        if kind == 1 and data:
            data = data[: 4 * int(rng.integers(0, len(data) // 4 + 1))] + b"\0" * 4 * int(rng.integers(0, 3))
        for pos in rng.integers(0, max(len(data), 1), 3 if data else 0):
            data[pos] ^= 1 << int(rng.integers(8))
        data = bytes(data)
    same_outcome(fast, ref, data, idx)


def test_each_error_is_raised_alike() -> None:
    rng = np.random.default_rng(5)
    tables = random_tables(rng, 16, 2)
    fast, ref = pair(tables)
    idx = np.zeros(50, np.int32)
    data = ref.encode(np.full(50, int(tables.offsets[0]), np.int32), idx)
    invalid = b"\xff" * 16  # the first quantile lies beyond the coder's range
    escapes = ref.encode(np.full(3, 10**6, np.int32), idx[:3])
    cases = {invalid: "outside the coder's range", data + b"\0" * 12: "unread words", data[:-2]: "32-bit words"}
    for bad, message in cases.items():
        for coder in (fast, ref):
            with pytest.raises(BitstreamError, match=message):
                coder.decode(bad, idx)
    for coder in (fast, ref):  # escapes decoded from words meant for three symbols: out of bounds or unread
        same_outcome(fast, ref, escapes, idx[:3])
        with pytest.raises(BitstreamError, match="no symbols are expected"):
            coder.decode(b"\0" * 4, idx[:0])
    far = EntropyTables(np.array([[2, 2]], np.uint32), np.array([2], np.int32), np.array([2**30], np.int32), 2)
    for coder in pair(far):  # 2**30 - 2**24 beyond the support: no Elias-gamma exponent reaches it
        with pytest.raises(BitstreamError, match="too far outside"):
            coder.encode(np.zeros(1, np.int32), np.zeros(1, np.int32))


def test_misuse_of_the_extension_is_a_value_error() -> None:
    module = rangecoder.compiled
    assert module is not None
    tables = rangecoder.CompiledTables(random_tables(np.random.default_rng(1), 8, 2), module)
    idx = np.zeros((2, 3, 4), np.int32)
    with pytest.raises(ValueError, match="band"):
        module.encode(tables._capsule, idx, idx, 2, 3, 5, 0, 3)  # shape disagrees with the buffers
    with pytest.raises(ValueError, match="band"):
        module.encode(tables._capsule, idx, idx, 2, 3, 4, 2, 4)  # rows beyond the array
    with pytest.raises(ValueError, match="sizes"):
        module.decode(tables._capsule, (b"",), idx, np.zeros(5, np.int32), 2, 3, 4, ((0, 3),))
    with pytest.raises(ValueError, match="sizes"):
        module.decode(tables._capsule, (b"", b""), idx, np.zeros_like(idx), 2, 3, 4, ((0, 3),))
    with pytest.raises(ValueError, match="sizes"):
        module.decode(tables._capsule, (b"\0" * 6,), idx, np.zeros_like(idx), 2, 3, 4, ((0, 3),))
    with pytest.raises(ValueError, match="band"):
        module.decode(tables._capsule, (b"",), idx, np.zeros_like(idx), 2, 3, 4, ((2, 1),))
    with pytest.raises(TypeError):
        module.decode(tables._capsule, [b""], idx, np.zeros_like(idx), 2, 3, 4, ((0, 3),))  # tuples only
    with pytest.raises(ValueError, match="table index"):
        module.encode(tables._capsule, idx, idx + 2, 2, 3, 4, 0, 3)
    with pytest.raises(ValueError):
        module.encode(object(), idx, idx, 2, 3, 4, 0, 3)  # not a tables capsule


def test_decoding_releases_the_gil() -> None:
    """Python runs in another thread throughout a decode, the C loop included: the middle half of the
    call (all of it inside the loop, which a held GIL would make a silent stretch) sees other steps."""
    rng = np.random.default_rng(9)
    tables = random_tables(rng, 16, 8)
    coder = IndexedCoder(tables)
    assert coder.releases_gil
    idx = rng.integers(0, 8, 3_000_000).astype(np.int32)
    data = coder.encode(random_symbols(rng, tables, idx, 0.0), idx)
    started, window = threading.Event(), []

    def work() -> None:
        started.set()
        start = time.perf_counter()
        coder.decode(data, idx)
        window.extend((start, time.perf_counter()))

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    stamps = []
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    start, stop = window
    quarter = (stop - start) / 4
    assert sum(start + quarter < t < stop - quarter for t in stamps) > 10
