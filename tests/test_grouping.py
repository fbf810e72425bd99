"""The compiled grouping and the numpy fallback: same order, same bitstreams, safe on misuse."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ckbd.runtime import grouping
from ckbd.runtime.coder import IndexedCoder
from ckbd.runtime.entropy_tables import default_scale_table, gaussian_tables

compiled = grouping.compiled
needs_compiled = pytest.mark.skipif(compiled is None, reason="the C grouping helper was not built")


@pytest.fixture
def numpy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "compiled", None)


def sample(n: int, tables: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, tables, n).astype(np.int32), rng.integers(-99, 99, n).astype(np.int32)


def moved(indexes: np.ndarray, num_tables: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, values in grouped order, and back in original order)."""
    groups = grouping.group(indexes, num_tables)
    grouped = np.empty_like(values)
    groups.split(values, grouped)
    back = np.empty_like(values)
    groups.merge(grouped, back)
    return np.asarray(groups.starts), grouped, back


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the helper with")
def test_helper_is_built_where_a_compiler_exists() -> None:
    assert compiled is not None


@pytest.mark.parametrize("num_tables", [1, 3, 64, 320])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_order_is_the_stable_sort(num_tables: int, n: int, numpy_only: None) -> None:
    idx, values = sample(n, num_tables)
    starts, grouped, back = moved(idx, num_tables, values)
    np.testing.assert_array_equal(grouped, values[np.argsort(idx, kind="stable")])
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=num_tables))]))
    np.testing.assert_array_equal(back, values)


@needs_compiled
@pytest.mark.parametrize("num_tables", [1, 3, 64, 320])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_compiled_matches_numpy(num_tables: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    idx, values = sample(n, num_tables, seed=n)
    fast = moved(idx, num_tables, values)
    monkeypatch.setattr(grouping, "compiled", None)
    for a, b in zip(fast, moved(idx, num_tables, values), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wide_keys_match_narrow(numpy_only: None) -> None:
    idx, _ = sample(3000, 40)
    narrow = grouping.group(idx, 40)
    wide = grouping._group_wide(idx, 40, bits=30)  # the >32-bit key path, forced
    np.testing.assert_array_equal(narrow.order, wide.order)
    np.testing.assert_array_equal(narrow.starts, wide.starts)


@needs_compiled
def test_both_paths_write_and_read_the_same_bitstream(monkeypatch: pytest.MonkeyPatch) -> None:
    coder = IndexedCoder(gaussian_tables(default_scale_table()), compiled=False)  # the path that groups in Python
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 64, 20_000).astype(np.int32)
    values = np.rint(rng.normal(0, 3, idx.size)).astype(np.int32)
    values[::997] = rng.integers(-(2**20), 2**20, values[::997].size)  # escapes in many tables
    fast = coder.encode(values, idx)
    monkeypatch.setattr(grouping, "compiled", None)
    assert coder.encode(values, idx) == fast
    np.testing.assert_array_equal(coder.decode(fast, idx), values)
    monkeypatch.setattr(grouping, "compiled", compiled)
    np.testing.assert_array_equal(coder.decode(fast, idx), values)


@needs_compiled
def test_compiled_helper_refuses_misuse() -> None:
    idx = np.array([0, 2, 1, 2], np.int32)
    starts = np.empty(3, np.intp)
    assert compiled.histogram(idx, starts) == 1  # index 2 is outside 2 tables
    assert compiled.histogram(np.array([0, -1], np.int32), starts) == 1  # negatives too
    assert compiled.histogram(idx[[0, 2]], starts) == -1
    values = np.arange(4, dtype=np.int32)
    out = np.empty(4, np.int32)
    wrong_starts = np.array([0, 2, 3, 4], np.intp)  # indexes hold two 2s, starts room for one
    with pytest.raises(ValueError, match="run starts"):
        compiled.merge(idx, wrong_starts, values, out)
    with pytest.raises(ValueError, match="run starts"):  # runs that do not tile [0, n) in order
        compiled.merge(idx, np.array([-2, 1, 2, 4], np.intp), values, out)
    with pytest.raises(ValueError, match="sizes"):
        compiled.split(idx, np.array([0, 1, 2, 4], np.intp), values, out[:3])
    with pytest.raises(ValueError, match="sizes"):
        compiled.histogram(np.zeros(3, np.int8), starts)
