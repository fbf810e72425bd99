"""The CPU entropy coder, its integer tables and ``ckbd bench coder``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ckbd.errors import BitstreamError, ModelError
from ckbd.runtime import rangecoder
from ckbd.runtime.coder import MAX_MAGNITUDE, IndexedCoder, dequantize, quantize
from ckbd.runtime.entropy_tables import (
    EntropyTables,
    default_scale_table,
    discrete_tables,
    gaussian_tables,
    quantize_pmf,
    scale_to_index,
)

SCALES = default_scale_table()


@pytest.fixture(scope="module")
def tables() -> EntropyTables:
    return gaussian_tables(SCALES)


@pytest.fixture(scope="module", params=[True, False], ids=["compiled", "constriction"])
def coder(tables: EntropyTables, request: pytest.FixtureRequest) -> IndexedCoder:
    """Both implementations of the stream format pass every test that takes this fixture."""
    if request.param and rangecoder.compiled is None:
        pytest.skip("the compiled range coder is not built here")
    return IndexedCoder(tables, compiled=request.param)


def gaussian_sample(n: int, seed: int, hi: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.11), np.log(hi), n)).astype(np.float32)
    return np.rint(rng.normal(0, scales)).astype(np.int32), scale_to_index(scales, SCALES)


def roundtrip(coder: IndexedCoder, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
    data = coder.encode(symbols, indexes)
    out = coder.decode(data, indexes)
    assert out.dtype == np.int32 and out.shape == np.shape(indexes)
    np.testing.assert_array_equal(out, symbols)
    return data


# -- tables ----------------------------------------------------------------------------------


def check_invariants(t: EntropyTables) -> None:
    width = t.freqs.shape[1]
    valid = np.arange(width)[None, :] < t.lengths[:, None]
    assert t.freqs.dtype == np.uint32 and t.lengths.dtype == np.int32
    assert np.all(t.freqs.astype(np.int64).sum(axis=1) == 1 << t.probability_bits)
    assert np.all(t.freqs[valid] >= 1) and np.all(t.freqs[~valid] == 0)


def test_gaussian_tables_shape_and_sums(tables: EntropyTables) -> None:
    check_invariants(tables)
    tails = -tables.offsets
    assert tables.num_tables == 64 and tables.probability_bits == 16
    np.testing.assert_array_equal(tables.lengths, 2 * tails + 2)  # -tail..tail, escape
    assert np.all(np.diff(tails) >= 0) and tails[0] >= 1
    center = tables.freqs[np.arange(64), tails]  # the mode (value 0)
    assert np.all(center == tables.freqs.max(axis=1))


def test_discrete_tables_add_escape() -> None:
    pmfs = [np.array([0.25, 0.5, 0.25]), np.array([0.1] * 9), np.array([1.0])]
    t = discrete_tables(pmfs, np.array([-1, 3, 0]))
    check_invariants(t)
    np.testing.assert_array_equal(t.lengths, [4, 10, 2])
    assert 1 <= t.row(0)[-1] <= 2  # pmf covers all mass: the escape keeps ~one unit
    assert abs(int(t.row(1)[-1]) - 0.1 * 65536) <= 1
    with pytest.raises(ModelError):
        discrete_tables(pmfs, np.array([0, 0]))


def test_quantize_pmf_is_exact_and_positive() -> None:
    pmf = np.array([1e-12, 0.5, 0.3, 1e-9, 0.2 - 1e-6, 0.0])
    freqs = quantize_pmf(pmf, 12)
    assert freqs.sum() == 4096 and freqs.min() >= 1
    np.testing.assert_array_equal(freqs, quantize_pmf(pmf, 12))
    flat = quantize_pmf(np.ones(4000), 12)  # nearly all mass goes to the +1 floor
    assert flat.sum() == 4096 and flat.min() == 1


def test_save_load_roundtrip(tables: EntropyTables, tmp_path: Path) -> None:
    path = tmp_path / "tables.npz"
    tables.save(path)
    loaded = EntropyTables.load(path)
    assert loaded.equals(tables) and not loaded.equals(gaussian_tables(SCALES[:8]))


def _write_npz(path: Path, tables: EntropyTables, **override: np.ndarray) -> None:
    arrays = {
        "freqs": tables.freqs,
        "lengths": tables.lengths,
        "offsets": tables.offsets,
        "precision": np.int32(tables.probability_bits),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)


@pytest.mark.parametrize("case", ["garbage", "sum", "zero", "dtype", "missing", "lengths"])
def test_load_rejects_invalid(tables: EntropyTables, tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.npz"
    bumped = tables.freqs.copy()
    bumped[3, 0] += 1
    zeroed = tables.freqs.copy()
    zeroed[5, 0] = 0
    zeroed[5, 1] += tables.freqs[5, 0]
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04 definitely not a zip")
    else:
        override = {
            "sum": {"freqs": bumped},
            "zero": {"freqs": zeroed},
            "dtype": {"freqs": tables.freqs.astype(np.float32)},
            "missing": {"offsets": None},
            "lengths": {"lengths": tables.lengths[:-1]},
        }[case]
        _write_npz(path, tables, **override)
    with pytest.raises(ModelError, match="entropy tables"):
        EntropyTables.load(path)


def test_scale_to_index_boundaries() -> None:
    t = SCALES
    probe = np.concatenate([
        t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(0)),
        np.array([0.0, 1e-6, 1e9, np.inf], dtype=np.float32),
    ])
    reference = (np.maximum(probe, t[0])[:, None] > t[None, :-1]).sum(axis=1)
    np.testing.assert_array_equal(scale_to_index(probe, t), reference)
    idx = scale_to_index(np.array([0.0, t[0], np.nextafter(t[0], np.float32(1)), t[5], t[-1], 1e9],
                                  dtype=np.float32), t)
    np.testing.assert_array_equal(idx, [0, 0, 1, 5, 63, 63])
    assert idx.dtype == np.int32


# -- round trips -----------------------------------------------------------------------------


def test_roundtrip_random_all_indexes(coder: IndexedCoder) -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 64, size=(3, 17, 31)).astype(np.int32)
    sym = np.rint(rng.normal(0, SCALES[idx] * rng.uniform(0.5, 2, idx.shape))).astype(np.int32)
    roundtrip(coder, sym, idx)
    roundtrip(coder, sym[:, ::2, 1::3], idx[:, ::2, 1::3])  # non-contiguous input


def test_roundtrip_table_extremes(coder: IndexedCoder, tables: EntropyTables) -> None:
    low = tables.offsets.astype(np.int64)
    high = low + tables.lengths - 2  # the last value before the escape entry
    sym = np.stack([low, high, low - 1, high + 1, low - 2, high + 3, low + 1], axis=1)
    idx = np.broadcast_to(np.arange(64, dtype=np.int32)[:, None], sym.shape)
    roundtrip(coder, sym.astype(np.int32), idx)


@pytest.mark.parametrize("value", [2**20, -(2**20), MAX_MAGNITUDE, -MAX_MAGNITUDE, 4097, -12345])
def test_roundtrip_escape_far_outside(coder: IndexedCoder, value: int) -> None:
    idx = np.array([0, 63, 30, 0, 0], dtype=np.int32)
    sym = np.array([value, value, 0, 1, -value], dtype=np.int32)
    roundtrip(coder, sym, idx)


def test_roundtrip_many_escapes(coder: IndexedCoder) -> None:
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 64, 5000).astype(np.int32)
    sym = rng.integers(-MAX_MAGNITUDE, MAX_MAGNITUDE + 1, 5000).astype(np.int32)
    roundtrip(coder, sym, idx)


def test_other_precisions_and_discrete_tables() -> None:
    rng = np.random.default_rng(3)
    for precision in (12, 24):
        c = IndexedCoder(gaussian_tables(SCALES[::8], probability_bits=precision))
        idx = rng.integers(0, 8, 3000).astype(np.int32)
        sym = np.rint(rng.normal(0, SCALES[::8][idx])).astype(np.int32)
        roundtrip(c, sym, idx)
    t = discrete_tables([np.full(5, 0.2), np.array([0.9, 0.1])], np.array([-2, 7]))
    roundtrip(IndexedCoder(t), np.array([-2, 2, 7, 8, 100, -100], np.int32),
              np.array([0, 0, 1, 1, 1, 0], np.int32))


def test_empty_input(coder: IndexedCoder) -> None:
    empty = np.zeros((1, 4, 0), dtype=np.int32)
    assert coder.encode(empty, empty) == b""
    assert coder.decode(b"", empty).shape == (1, 4, 0)
    assert coder.estimate_bits(empty, empty) == 0.0
    with pytest.raises(BitstreamError):
        coder.decode(b"\0\0\0\0", empty)


def test_deterministic(coder: IndexedCoder, tables: EntropyTables) -> None:
    sym, idx = gaussian_sample(20000, 5)
    data = coder.encode(sym, idx)
    assert coder.encode(sym, idx) == data
    assert IndexedCoder(gaussian_tables(SCALES)).encode(sym, idx) == data


def test_thread_safe(coder: IndexedCoder) -> None:
    samples = [gaussian_sample(20000 + 1000 * i, 10 + i) for i in range(4)]
    streams = [coder.encode(s, i) for s, i in samples]
    results: list[bool] = [False] * 4

    def work(k: int) -> None:
        for _ in range(5):
            out = coder.decode(streams[k], samples[k][1])
            results[k] = bool(np.array_equal(out, samples[k][0]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(results)


# -- invalid input and corrupt data ----------------------------------------------------------


def test_rejects_invalid_input(coder: IndexedCoder) -> None:
    idx = np.zeros(3, dtype=np.int32)
    with pytest.raises(BitstreamError, match="magnitude"):
        coder.encode(np.array([0, MAX_MAGNITUDE + 1, 0], np.int32), idx)
    with pytest.raises(BitstreamError, match="out of range"):
        coder.encode(np.zeros(3, np.int32), np.array([0, 64, 0], np.int32))
    with pytest.raises(BitstreamError, match="out of range"):
        coder.decode(b"\0" * 8, np.array([-1, 0, 0], np.int32))
    with pytest.raises(BitstreamError, match="out of range"):
        coder.decode(b"\0" * 8, np.array([2**32 + 1, 0, 0], np.int64))  # must not wrap to 1
    roundtrip(coder, np.array([1, -2, 3], np.int64), np.array([40, 50, 63], np.uint8))
    with pytest.raises(BitstreamError):
        coder.encode(np.zeros(3, np.float32), idx)
    with pytest.raises(BitstreamError):
        coder.encode(np.zeros(4, np.int32), idx)
    with pytest.raises(BitstreamError, match="32-bit words"):
        coder.decode(b"\0" * 7, idx)


def _decode_or_error(coder: IndexedCoder, data: bytes, idx: np.ndarray) -> np.ndarray | None:
    try:
        out = coder.decode(data, idx)
    except BitstreamError:
        return None
    assert out.shape == idx.shape and np.abs(out).max() <= MAX_MAGNITUDE
    return out


def test_corrupt_and_truncated_data_is_bounded(coder: IndexedCoder) -> None:
    sym, idx = gaussian_sample(30000, 6)
    sym[::997] = 5000  # exercise the escape path too
    data = coder.encode(sym, idx)
    rng = np.random.default_rng(7)
    start = time.perf_counter()
    # Truncation, appended words and wholesale garbage must never reproduce the input.
    broken = [data[: 4 * k] for k in (0, 1, len(data) // 8, len(data) // 4 - 1)]
    broken += [data + b"\0" * 8, bytes(len(data)), b"\xff" * len(data)]
    broken.append(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    for bad in broken:
        out = _decode_or_error(coder, bad, idx)
        assert out is None or not np.array_equal(out, sym)
    # Bit flips: an error or a bounded result (flips in the final word's slack bits may be
    # harmless; the container's checksum is what catches the rest).
    for _ in range(40):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(flipped), 2):
            flipped[pos] ^= 1 << int(rng.integers(8))
        _decode_or_error(coder, bytes(flipped), idx)
    assert time.perf_counter() - start < 10.0


# -- rate ------------------------------------------------------------------------------------


def test_rate_overhead_small(coder: IndexedCoder) -> None:
    sym, idx = gaussian_sample(200_000, 8)
    data = coder.encode(sym, idx)
    ideal = coder.estimate_bits(sym, idx)
    assert 0 < 8 * len(data) / ideal - 1 < 0.005


def test_estimate_bits_by_hand() -> None:
    t = discrete_tables([np.array([0.5, 0.25, 0.125])], np.array([0]), probability_bits=16)
    c = IndexedCoder(t)
    sym = np.array([0, 1, 2, 3], dtype=np.int32)  # 3 is escaped: overflow d=0, n=0
    p = t.row(0) / 65536
    expected = -np.log2(p[0] * p[1] * p[2] * p[3]) + np.log2(50)
    assert c.estimate_bits(sym, np.zeros(4, np.int32)) == pytest.approx(expected)


# -- benchmark and CLI -----------------------------------------------------------------------


def test_runtime_and_benchmark_are_torch_free() -> None:
    code = (
        "import sys, ckbd.runtime.coder, ckbd.runtime.entropy_tables, ckbd.tools.bench.coder;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


def test_cli_bench_coder_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ckbd.cli.main import app

    out = tmp_path / "coder.json"
    args = ["bench", "coder", "--symbols", "200000", "--repeats", "1", "--threads", "2", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("encode_msym_s", "decode_msym_s", "overhead_pct", "n_symbols", "bytes"):
        assert key in report
    assert report["n_symbols"] == 200000 and report["encode_msym_s"] > 0
    assert "cpu_count" in report["machine"] and "decode" in result.output
    assert report["grouping"] in ("compiled", "numpy")
    assert report["coder"] in ("compiled", "constriction") and report["substreams"] > 1  # ~70 KB: cut
    assert report["threads"] == (2 if report["coder"] == "compiled" else 1)


def test_offsets_code_the_rounded_residual_and_decode_the_reconstruction(coder: IndexedCoder) -> None:
    rng = np.random.default_rng(11)
    values = rng.normal(0, 4, (2, 300)).astype(np.float32)
    means = rng.normal(0, 2, (2, 300)).astype(np.float32)
    indexes = rng.integers(0, len(SCALES), (2, 300)).astype(np.int32)
    data = coder.encode(values, indexes, means)
    assert data == coder.encode(quantize(values, means), indexes)  # the same symbols as coding them directly
    decoded = coder.decode(data, indexes, means)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, dequantize(quantize(values, means), means))
    np.testing.assert_array_equal(coder.decode(data, indexes), quantize(values, means))
