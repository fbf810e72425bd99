"""Substreams: each y pass cut into row bands that are coded independently, on several cores.

A pass (the anchors, or the non-anchors: ``(1, M, rows, width)``) is cut into ``K`` bands of whole
latent rows, band ``j`` holding rows ``[j * rows // K, (j + 1) * rows // K)`` of every channel; each
band is one range-coder stream of the layout in :mod:`ckbd.runtime.coder`, over the band's symbols in
C order. The entropy parameters come from networks run on the whole latent, so a cut costs only the
band's final word or two and its length in the table of contents, no modelling loss.

With ``K = 1`` for both passes the payloads are exactly the single streams of earlier files and the
header's substreams flag is clear. Otherwise the flag is set and each y payload starts with a table
of contents: one byte ``K`` (1..16, at most ``rows``), then the lengths in 32-bit words of the
first ``K - 1`` substreams as LEB128 varints (the last one takes the rest), then the substreams.

The encoder picks ``K`` from the size the tables predict for the pass (:func:`choose_count`), so
that the added bytes stay within :data:`OVERHEAD_BUDGET` of it. Coding is identical for every
thread count; threads help only where the compiled coder releases the GIL. Each decoding thread
takes the next pair of neighbouring substreams (or the next one, where there are too few to pair)
as it gets free and decodes them in one call of the compiled coder, in alternation.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ckbd.errors import BitstreamError

if TYPE_CHECKING:  # the container's readers (stream_io) use the limits here without the coder
    from ckbd.runtime.coder import IndexedCoder

#: Most substreams per pass (the cores a GPU host gives one decode).
MAX_SUBSTREAMS = 16
#: Largest share of a pass's size its substreams may add.
OVERHEAD_BUDGET = 0.001
#: Bytes budgeted per extra substream: its final word or two and its length in the table of contents
#: (two bytes for 0.5 to 64 KB) measured 4.4 on average; the margin covers a pass that codes smaller
#: than its tables predict.
SUBSTREAM_COST = 8
_MAX_VARINT_BYTES = 5  # a u32 word count

R = TypeVar("R")
Band = tuple[int, int]


def default_threads() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_count(expected_bytes: float, rows: int) -> int:
    """The most substreams whose table of contents and final words stay within the budget."""
    budget = OVERHEAD_BUDGET * expected_bytes - 1  # the count byte
    extra = int(budget // SUBSTREAM_COST) if budget > 0 else 0
    return max(1, min(MAX_SUBSTREAMS, rows, 1 + extra))


def bands(rows: int, count: int) -> list[Band]:
    """Row ranges of ``count`` substreams over ``rows`` latent rows (equal sizes, within a row)."""
    return [(j * rows // count, (j + 1) * rows // count) for j in range(count)]


def encode_pass(coder: IndexedCoder, symbols: np.ndarray, indexes: np.ndarray, threads: int = 0,
                count: int | None = None, limit: int = MAX_SUBSTREAMS) -> list[bytes]:
    """The substreams of one pass, ``(..., rows, width)``: ``count`` of them, or as many as
    :func:`choose_count` allows, at most ``limit`` and the format's limits. ``threads`` 0 means
    :func:`default_threads`."""
    shape = np.shape(indexes)
    flat_symbols, flat_indexes = coder.check(np.asarray(symbols), indexes)
    rows, width = shape[-2:]
    if count is None:
        count = choose_count(coder.expected_bytes(flat_indexes), rows)
    count = max(1, min(count, limit, MAX_SUBSTREAMS, rows))
    values, idx = flat_symbols.reshape(-1, rows, width), flat_indexes.reshape(-1, rows, width)
    cuts = bands(rows, count)
    return _shared_map(lambda i: coder.encode_band(values, idx, cuts[i]), count, worker_count(coder, threads, count))


def decode_pass(coder: IndexedCoder, payload: bytes, indexes: np.ndarray, split: bool,
                threads: int = 0) -> np.ndarray:
    """Invert :func:`encode_pass` and :func:`join`: int32 symbols of ``indexes``' shape.

    ``split`` is the header's substreams flag: whether the payload starts with a table of contents.
    """
    shape = np.shape(indexes)
    rows, width = shape[-2:]
    parts = parse(payload, rows, split)
    idx = coder.check_indexes(indexes).reshape(-1, rows, width)
    out = np.empty(idx.shape, dtype=np.int32)
    cuts = bands(rows, len(parts))
    workers = worker_count(coder, threads, len(parts))
    items = decode_items(len(parts), workers)

    def decode(i: int) -> None:  # one call of the compiled coder per item, which decodes it as lanes
        coder.decode_bands([parts[k] for k in items[i]], idx, out, [cuts[k] for k in items[i]])

    _shared_map(decode, len(items), workers)
    return out.reshape(shape)


def decode_items(count: int, workers: int) -> list[range]:
    """The substreams each call of the compiled decoder takes: pairs of neighbours, which it decodes in
    alternation (two dependency chains overlap on one core), where every worker still gets a pair;
    otherwise one substream per call, so that no worker is left without one."""
    lanes = 2 if count >= 2 * workers else 1
    return [range(i, min(i + lanes, count)) for i in range(0, count, lanes)]


def counts(anchors: bytes, nonanchors: bytes, rows: int, split: bool) -> tuple[int, int]:
    """How many substreams each y payload of a stream holds (its tables of contents checked)."""
    return len(parse(anchors, rows, split)), len(parse(nonanchors, rows, split))


def join(anchors: Sequence[bytes], nonanchors: Sequence[bytes]) -> tuple[bytes, bytes, bool]:
    """The two y payloads and the substreams flag: bare streams when both passes have one."""
    split = len(anchors) > 1 or len(nonanchors) > 1
    return payload(anchors, split), payload(nonanchors, split), split


def payload(parts: Sequence[bytes], split: bool) -> bytes:
    """One pass's payload: its table of contents and substreams, or (not ``split``) its one stream."""
    if not split:
        (stream,) = parts
        return stream
    lengths = b"".join(_varint(len(part) // 4) for part in parts[:-1])
    return bytes([len(parts)]) + lengths + b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def parse(payload: bytes, rows: int, split: bool) -> list[bytes]:
    """The substreams of a y payload, checking its table of contents (:class:`BitstreamError`)."""
    if not split:
        return [payload]
    if not payload:
        raise BitstreamError("truncated table of contents: the payload is empty")
    count, at, limit = payload[0], 1, min(MAX_SUBSTREAMS, max(rows, 1))
    if not 1 <= count <= limit:
        raise BitstreamError(f"corrupt table of contents: {count} substreams for {rows} latent rows "
                             f"(1..{limit} allowed)")
    lengths = []
    for _ in range(count - 1):
        words, at = _read_varint(payload, at)
        lengths.append(4 * words)
    body = len(payload) - at
    if body % 4:
        raise BitstreamError(f"corrupt table of contents: {body} bytes of substreams are not whole 32-bit words")
    if sum(lengths) > body:
        raise BitstreamError(f"corrupt table of contents: it names {sum(lengths)} bytes of substreams, "
                             f"the payload holds {body}")
    parts = []
    for length in [*lengths, body - sum(lengths)]:
        parts.append(payload[at:at + length])
        at += length
    return parts


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if at + i >= len(data):
            raise BitstreamError("truncated table of contents")
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if (byte == 0 and i) or value >= 1 << 32:  # one spelling per length
                break
            return value, at + i + 1
    raise BitstreamError("corrupt table of contents: invalid substream length")


def worker_count(coder: IndexedCoder, threads: int, substreams: int) -> int:
    """Threads that code a pass of ``substreams``: ``threads`` (0: :func:`default_threads`), at most one
    per substream, and one where constriction codes (it holds the GIL)."""
    if not coder.releases_gil:  # constriction holds the GIL: threads would only add overhead
        return 1
    return max(1, min(threads or default_threads(), substreams))


def _shared_map(fn: Callable[[int], R], count: int, workers: int) -> list[R]:
    """``fn(i)`` for ``i`` in ``range(count)`` on ``workers`` threads (the calling one among them), each
    taking the next item when it gets free, so that a worker that starts late or runs on a busy core
    takes fewer instead of holding up the rest. Results in order; the first failure in order is raised.
    The caller waits for the items, not for workers that start after the last one was taken."""
    results: list[R | None] = [None] * count
    errors: list[BaseException | None] = [None] * count
    tickets, finished, done = itertools.count(), itertools.count(1), threading.Event()

    def drain() -> None:
        while (i := next(tickets)) < count:  # next() on a count is atomic: each item is taken once
            try:
                results[i] = fn(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller, in order
                errors[i] = exc
            if next(finished) == count:
                done.set()

    for _ in range(min(workers, count) - 1):
        _executor().submit(drain)
    drain()
    if count:
        done.wait()
    for error in errors:
        if error is not None:
            raise error
    return results  # type: ignore[return-value]  # every item was set or raised


_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's coding threads, kept between passes (starting threads costs milliseconds on a busy
    machine) and made anew in a forked child, which inherits the pool but not its threads."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            size = max(MAX_SUBSTREAMS, os.cpu_count() or 1)
            _pool = (os.getpid(), ThreadPoolExecutor(size, thread_name_prefix="ckbd-coder"))
        return _pool[1]
