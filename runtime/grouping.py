"""Stable grouping of symbols by table index: moving values into grouped order and back.

The coder lists symbols table by table, each table's symbols in their original order. That
order is canonical (a stable sort), so the compiled counting sort (``_grouping``, built at
install when a C compiler is present) and the numpy key sort here produce the same order and
the same bitstreams; tests check that they agree.

The buffers are reused per thread: on small VMs the page faults of fresh multi-megabyte arrays
cost more than the grouping itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import pairwise
from types import ModuleType

import numpy as np


def _load_compiled() -> ModuleType | None:
    try:
        from ckbd.runtime import _grouping  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler: the numpy path is correct, only slower
        return None
    return _grouping


#: The compiled helpers, or None where the extension was not built.
compiled: ModuleType | None = _load_compiled()

#: Calls with more symbols than this allocate their buffers instead of keeping them per thread.
WORKSPACE_LIMIT = 1 << 22


@dataclass(frozen=True)
class Grouping:
    """Where each table's run lies in grouped order, and how to move values in and out of it.

    ``starts[k]:starts[k + 1]`` is table ``k``'s run. ``order`` (grouped position -> original
    position) exists on the numpy path only: the compiled moves need just the counts.
    """

    indexes: np.ndarray  # flat int32 table indexes
    starts: np.ndarray  # num_tables + 1 run boundaries
    order: np.ndarray | None

    def runs(self) -> list[tuple[int, int, int]]:
        """(table, start, stop) of every non-empty run, in grouped order."""
        bounds = self.starts.tolist()
        return [(k, a, b) for k, (a, b) in enumerate(pairwise(bounds)) if b > a]

    def split(self, values: np.ndarray, grouped: np.ndarray) -> None:
        """Write int32 ``values`` (original order) into ``grouped`` in grouped order."""
        if self.order is None:
            _require_compiled().split(self.indexes, self.starts, values, grouped)
        else:
            np.take(values, self.order, out=grouped, mode="clip")  # 'raise' would buffer

    def merge(self, grouped: np.ndarray, values: np.ndarray) -> None:
        """Write int32 ``grouped`` (grouped order) into ``values`` in original order."""
        if self.order is None:
            _require_compiled().merge(self.indexes, self.starts, grouped, values)
        else:
            values[self.order] = grouped


def _require_compiled() -> ModuleType:
    if compiled is None:  # a Grouping made by the compiled path outlived it (tests only)
        raise RuntimeError("the compiled grouping helper is not loaded")
    return compiled


class _Workspace(threading.local):
    """Per-thread buffers: an intp permutation and a 32-bit key/scratch array."""

    def __init__(self) -> None:
        self.order = np.empty(0, dtype=np.intp)
        self.key = np.empty(0, dtype=np.uint32)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > WORKSPACE_LIMIT:
            return np.empty(n, np.intp), np.empty(n, np.uint32)
        if self.order.size < n:
            self.order = np.empty(n, dtype=np.intp)
            self.key = np.empty(n, dtype=np.uint32)
        return self.order[:n], self.key[:n]


_workspace = _Workspace()


def scratch(n: int) -> np.ndarray:
    """A per-thread int32 buffer of length ``n``, valid until this thread's next :func:`group`."""
    return _workspace.get(n)[1].view(np.int32)


def group(indexes: np.ndarray, num_tables: int) -> Grouping:
    """Group flat int32 ``indexes``, all checked to lie in ``[0, num_tables)``."""
    if compiled is not None:
        starts = np.empty(num_tables + 1, dtype=np.intp)
        if compiled.histogram(indexes, starts) >= 0:
            raise ValueError("table index out of range")  # callers check first: a bug
        return Grouping(indexes, starts, None)
    return _group_numpy(indexes, num_tables)


def _group_numpy(indexes: np.ndarray, num_tables: int) -> Grouping:
    """Sorts ``index << bits | position`` keys: they are unique, so any sort algorithm yields the
    one stable order, and numpy's vectorised sort of 32-bit keys beats its stable argsort."""
    n = indexes.size
    bits = max(1, (n - 1).bit_length())
    if bits + max(1, (num_tables - 1).bit_length()) > 32:
        return _group_wide(indexes, num_tables, bits)
    order, key = _workspace.get(n)
    np.left_shift(indexes.view(np.uint32), np.uint32(bits), out=key)
    key |= np.arange(n, dtype=np.uint32)
    key.sort()
    starts = np.append(np.searchsorted(key, np.arange(num_tables, dtype=np.uint32) << np.uint32(bits)), n)
    np.bitwise_and(key, np.uint32((1 << bits) - 1), out=order, casting="unsafe")
    return Grouping(indexes, starts, order)


def _group_wide(indexes: np.ndarray, num_tables: int, bits: int) -> Grouping:
    """:func:`_group_numpy` with 64-bit keys, for inputs too large for 32-bit ones."""
    key = indexes.astype(np.uint64) << np.uint64(bits)
    key |= np.arange(indexes.size, dtype=np.uint64)
    key.sort()
    starts = np.searchsorted(key, np.arange(num_tables + 1, dtype=np.uint64) << np.uint64(bits))
    order = (key & np.uint64((1 << bits) - 1)).astype(np.intp)
    return Grouping(indexes, starts, order)
