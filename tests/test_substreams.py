"""Substreams of a pass: row bands, the table of contents, the count rule, and thread counts."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckbd.errors import BitstreamError
from ckbd.runtime import rangecoder, substreams
from ckbd.runtime.coder import IndexedCoder
from ckbd.runtime.entropy_tables import default_scale_table, gaussian_tables, scale_to_index

SCALES = default_scale_table()
TABLES = gaussian_tables(SCALES)
COMPILED = [True] if rangecoder.compiled is not None else []


@pytest.fixture(scope="module", params=[*COMPILED, False], ids=lambda c: "compiled" if c else "constriction")
def coder(request: pytest.FixtureRequest) -> IndexedCoder:
    return IndexedCoder(TABLES, compiled=request.param)


def latent(rows: int, seed: int = 0, channels: int = 6, width: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A (1, C, rows, W) pass with one escape in every row, so that every substream has escapes."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.11), np.log(20), (1, channels, rows, width))).astype(np.float32)
    symbols = np.rint(rng.normal(0, scales)).astype(np.int32)
    symbols[0, rng.integers(0, channels, rows), np.arange(rows), rng.integers(0, width, rows)] = 40_000
    return symbols, scale_to_index(scales, SCALES)


def test_choose_count_keeps_the_overhead_within_budget() -> None:
    cost = substreams.SUBSTREAM_COST
    assert substreams.choose_count(0, 32) == 1
    assert substreams.choose_count((1 + cost) * 1000 - 1, 32) == 1
    assert substreams.choose_count((1 + cost) * 1000, 32) == 2
    for size in (10_000, 50_000, 123_456, 10**6):
        count = substreams.choose_count(size, 64)
        assert 1 + (count - 1) * cost <= substreams.OVERHEAD_BUDGET * size or count == 1
    assert substreams.choose_count(10**9, 64) == substreams.MAX_SUBSTREAMS
    assert substreams.choose_count(10**9, 3) == 3  # never more substreams than rows


@pytest.mark.parametrize("rows", [1, 4, 15, 16, 17, 64])
def test_bands_tile_the_rows(rows: int) -> None:
    for count in range(1, min(rows, 16) + 1):
        cuts = substreams.bands(rows, count)
        assert cuts[0][0] == 0 and cuts[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
        sizes = [b - a for a, b in cuts]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("count", range(1, 17))
def test_every_count_round_trips_with_exact_boundaries(coder: IndexedCoder, count: int) -> None:
    symbols, indexes = latent(16, seed=count)
    parts = substreams.encode_pass(coder, symbols, indexes, threads=2, count=count)
    assert len(parts) == count
    for part, (r0, r1) in zip(parts, substreams.bands(16, count)):  # each part is its band's own stream
        band = np.ascontiguousarray(symbols[:, :, r0:r1]), np.ascontiguousarray(indexes[:, :, r0:r1])
        assert part == coder.encode(*band)
        assert np.any(coder.decode(part, band[1]) == 40_000)  # escapes in every substream
    anchors, nonanchors, split = substreams.join(parts, parts)
    assert split == (count > 1) and anchors == nonanchors
    np.testing.assert_array_equal(substreams.decode_pass(coder, anchors, indexes, split, threads=3), symbols)


def test_one_substream_is_the_bare_stream_of_earlier_files(coder: IndexedCoder) -> None:
    symbols, indexes = latent(8)
    parts = substreams.encode_pass(coder, symbols, indexes, count=1)
    assert parts == [coder.encode(symbols, indexes)]
    assert substreams.join(parts, parts) == (parts[0], parts[0], False)
    other = substreams.encode_pass(coder, *latent(8, seed=1), count=3)
    anchors, nonanchors, split = substreams.join(parts, other)  # one pass split: both carry contents
    assert split and anchors == b"\x01" + parts[0] and nonanchors[0] == 3


def test_tiny_pass_has_at_most_one_substream_per_row(coder: IndexedCoder) -> None:
    symbols, indexes = latent(3)
    parts = substreams.encode_pass(coder, symbols, indexes, count=16)
    assert len(parts) == 3
    payload, _, split = substreams.join(parts, parts)
    np.testing.assert_array_equal(substreams.decode_pass(coder, payload, indexes, split), symbols)


def test_thread_counts_and_implementations_agree() -> None:
    symbols, indexes = latent(32, channels=12, width=9)
    reference = substreams.encode_pass(IndexedCoder(TABLES, compiled=False), symbols, indexes, count=7)
    payload, _, _ = substreams.join(reference, reference)
    for compiled in [*COMPILED, False]:
        coder = IndexedCoder(TABLES, compiled=compiled)
        for threads in (1, 2, 3, 4):
            assert substreams.encode_pass(coder, symbols, indexes, threads=threads, count=7) == reference
            out = substreams.decode_pass(coder, payload, indexes, True, threads=threads)
            np.testing.assert_array_equal(out, symbols)


def test_chosen_count_grows_with_the_pass(coder: IndexedCoder) -> None:
    small = substreams.encode_pass(coder, *latent(16))
    symbols, indexes = latent(64, channels=96, width=48)
    large = substreams.encode_pass(coder, symbols, indexes)
    assert len(small) == 1 and len(large) > 1
    single = coder.encode(symbols, indexes)
    overhead = len(substreams.join(large, large)[0]) - len(single)
    assert 0 < overhead <= substreams.OVERHEAD_BUDGET * len(single)


def contents(count: int, *lengths: int) -> bytes:
    return bytes([count]) + b"".join(substreams._varint(n) for n in lengths)


@pytest.mark.parametrize(("payload", "rows", "message"), [
    (b"", 8, "^truncated table of contents"),
    (contents(0), 8, "^corrupt table of contents: 0 substreams for 8 latent rows"),
    (contents(17) + b"\0" * 64, 64, "^corrupt table of contents: 17 substreams for 64 latent rows"),
    (contents(5, 1, 1, 1, 1) + b"\0" * 20, 4, "^corrupt table of contents: 5 substreams for 4 latent rows"),
    (contents(3, 1) + b"\x80", 8, "^truncated table of contents$"),
    (contents(3), 8, "^truncated table of contents$"),
    (contents(2) + b"\x80\x00" + b"\0" * 8, 8, "invalid substream length"),  # an overlong spelling of 0
    (contents(2) + b"\xff\xff\xff\xff\x7f" + b"\0" * 8, 8, "invalid substream length"),
    (contents(2) + b"\xff\xff\xff\xff\xff\x01", 8, "invalid substream length"),
    (contents(2, 1) + b"\0" * 7, 8, "not whole 32-bit words"),
    (contents(3, 2, 2) + b"\0" * 12, 8, "names 16 bytes of substreams, the payload holds 12"),
])  # fmt: skip
def test_broken_contents_are_one_line_errors(payload: bytes, rows: int, message: str) -> None:
    with pytest.raises(BitstreamError, match=message) as info:
        substreams.parse(payload, rows, split=True)
    assert "\n" not in str(info.value)


def test_parse_splits_at_the_listed_lengths() -> None:
    assert substreams.parse(contents(3, 1, 0) + bytes(range(12)), 8, True) == [
        bytes(range(4)), b"", bytes(range(4, 12))]
    assert substreams.parse(b"\x05" * 7, 8, False) == [b"\x05" * 7]  # no flag: the bare stream
    assert substreams._varint(300) == b"\xac\x02"


def test_reordered_contents_fail_or_decode_other_symbols(coder: IndexedCoder) -> None:
    symbols, indexes = latent(16)
    parts = substreams.encode_pass(coder, symbols, indexes, count=3)
    assert len(parts[0]) != len(parts[1])
    body = b"".join(parts)
    assert substreams.join(parts, parts)[0] == contents(3, len(parts[0]) // 4, len(parts[1]) // 4) + body
    reordered = contents(3, len(parts[1]) // 4, len(parts[0]) // 4) + body
    try:
        out = substreams.decode_pass(coder, reordered, indexes, True)
    except BitstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert not np.array_equal(out, symbols)  # the symbols CRC of the container catches this


def test_worker_count_is_capped_by_the_substreams_and_the_coder() -> None:
    compiled, reference = IndexedCoder(TABLES), IndexedCoder(TABLES, compiled=False)
    assert substreams.worker_count(reference, 8, 16) == 1  # constriction holds the GIL
    if compiled.releases_gil:
        assert substreams.worker_count(compiled, 8, 3) == 3
        assert substreams.worker_count(compiled, 2, 16) == 2
        assert substreams.worker_count(compiled, 0, 16) == min(16, substreams.default_threads())
    assert 1 <= substreams.default_threads() <= (os.cpu_count() or 1)


def test_decode_items_pair_neighbours_while_every_worker_gets_a_pair() -> None:
    assert [list(r) for r in substreams.decode_items(16, 2)] == [[2 * i, 2 * i + 1] for i in range(8)]
    assert [list(r) for r in substreams.decode_items(5, 1)] == [[0, 1], [2, 3], [4]]
    assert [list(r) for r in substreams.decode_items(3, 2)] == [[0], [1], [2]]  # pairs would idle a worker
    assert [list(r) for r in substreams.decode_items(16, 16)] == [[i] for i in range(16)]
    assert [list(r) for r in substreams.decode_items(1, 4)] == [[0]]


def test_shared_map_runs_each_item_once_in_order_and_raises_the_first_failure() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # uneven items: the workers take different numbers of them
        with lock:
            calls.append(i)
        if i in (5, 3):
            raise ValueError(f"item {i}")
        return i * i

    with pytest.raises(ValueError, match="item 3"):  # the first in order, not the first to happen
        substreams._shared_map(work, 9, 3)
    assert sorted(calls) == list(range(9))
    assert substreams._shared_map(lambda i: i + 1, 7, 4) == list(range(1, 8))
    assert substreams._shared_map(lambda i: i, 0, 2) == []


def test_shared_map_does_not_wait_for_a_worker_that_starts_late() -> None:
    """The calling thread takes every item when the pool's threads are busy elsewhere."""
    release = threading.Event()
    blockers = [substreams._executor().submit(release.wait) for _ in range(64)]
    try:
        names: list[str] = []
        results: list[list[int]] = []
        caller = threading.Thread(target=lambda: results.append(substreams._shared_map(
            lambda i: names.append(threading.current_thread().name) or i, 4, 2)), name="caller")
        caller.start()
        caller.join(timeout=30)  # waiting for the queued worker would never end while the pool is blocked
        assert not caller.is_alive() and results == [[0, 1, 2, 3]]
        assert set(names) == {"caller"}
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40), rows=st.integers(0, 40))
def test_any_bytes_parse_or_fail_in_one_line(payload: bytes, rows: int) -> None:
    try:
        parts = substreams.parse(payload, rows, split=True)
    except BitstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= len(parts) <= min(16, max(rows, 1)) and all(len(part) % 4 == 0 for part in parts)
        assert sum(map(len, parts)) < len(payload)  # the table of contents took at least its count byte
