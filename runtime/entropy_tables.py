"""Integer entropy tables: K discrete distributions that the range coder selects by index.

Every distribution is stored as integer frequencies that sum exactly to ``2**probability_bits`` (the file
keeps the key ``precision``), so the
encoder and the decoder see bit-identical models on every machine: floating point is used once,
when a table is built, and never while coding (the exporter saves the tables, and the decoder
loads them rather than rebuilding them). The last valid entry of each row is an *escape*
that stands for every value outside the row's support (see :mod:`ckbd.runtime.coder`).

The Gaussian tables follow the CompressAI / tensorflow-compression recipe (a log-spaced scale
table, one zero-mean discretised Gaussian per scale, support cut where the tail mass is
negligible); the indexes are computed by the exported graphs with :func:`scale_to_index`'s rule.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ckbd.errors import ModelError

#: Highest ``probability_bits`` the coder accepts (constriction's default models use 24-bit fixed point).
MAX_PRECISION = 24
_FIELDS = ("freqs", "lengths", "offsets", "precision")


@dataclass(frozen=True, eq=False)
class EntropyTables:
    """K integer distributions; row k is valid in ``freqs[k, :lengths[k]]``, its last entry escapes.

    ``offsets[k]`` is the symbol value of entry 0 of row k, so entry ``e`` codes the value
    ``offsets[k] + e`` for ``e < lengths[k] - 1``.
    """

    freqs: np.ndarray  # (K, L) uint32
    lengths: np.ndarray  # (K,) int32
    offsets: np.ndarray  # (K,) int32
    probability_bits: int

    def __post_init__(self) -> None:
        _validate(self.freqs, self.lengths, self.offsets, self.probability_bits)
        for name in _FIELDS[:3]:  # private read-only copies: coders cache models built from them
            array = np.array(getattr(self, name), copy=True)
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @property
    def num_tables(self) -> int:
        return int(self.lengths.shape[0])

    def row(self, k: int) -> np.ndarray:
        """The valid frequencies of table ``k`` (escape last)."""
        return self.freqs[k, : self.lengths[k]]

    def equals(self, other: object) -> bool:
        """Exact comparison (dataclass ``==`` would compare arrays elementwise)."""
        return (
            isinstance(other, EntropyTables)
            and self.probability_bits == other.probability_bits
            and all(
                np.array_equal(getattr(self, f), getattr(other, f)) for f in _FIELDS[:3]
            )
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            freqs=self.freqs,
            lengths=self.lengths,
            offsets=self.offsets,
            precision=np.int32(self.probability_bits),
        )
        return buf.getvalue()

    def save(self, path: Path) -> None:
        """Write as ``.npz`` atomically (readers never see half a table file)."""
        from ckbd.runtime.atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> EntropyTables:
        """Read and validate a ``.npz`` written by :meth:`save`; raises :class:`ModelError`."""
        try:
            with np.load(Path(path), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _FIELDS}
        except FileNotFoundError:
            raise ModelError(f"entropy tables not found: {path}") from None
        except KeyError as exc:
            raise ModelError(f"entropy tables {path} lack the array {exc}") from None
        except Exception as exc:  # zipfile / pickle / format errors
            raise ModelError(f"cannot read entropy tables {path}: {exc}") from None
        probability_bits = arrays.pop("precision")
        if probability_bits.shape != () or probability_bits.dtype.kind not in "iu":
            raise ModelError(f"entropy tables {path}: 'precision' must be an integer scalar")
        try:
            return cls(probability_bits=int(probability_bits), **arrays)
        except ModelError as exc:
            raise ModelError(f"entropy tables {path} are invalid: {exc}") from None


def _validate(freqs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, probability_bits: int) -> None:
    """Check every invariant the coder relies on; a bad table must fail here, not mid-stream."""
    if not isinstance(probability_bits, int) or not 2 <= probability_bits <= MAX_PRECISION:
        raise ModelError(f"probability_bits must be an int in [2, {MAX_PRECISION}], got {probability_bits!r}")
    for name, arr, dtype, ndim in (
        ("freqs", freqs, np.uint32, 2),
        ("lengths", lengths, np.int32, 1),
        ("offsets", offsets, np.int32, 1),
    ):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
            got = f"{arr.dtype}{arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ModelError(f"'{name}' must be a {ndim}-d {np.dtype(dtype).name} array, got {got}")
    k, width = freqs.shape
    if k == 0 or lengths.shape != (k,) or offsets.shape != (k,):
        raise ModelError(f"need K >= 1 tables with lengths/offsets of shape ({k},)")
    if lengths.min() < 2 or lengths.max() > width:
        raise ModelError(f"every table needs 2..{width} entries (a value and the escape)")
    valid = np.arange(width)[None, :] < lengths[:, None]
    if np.any(freqs[valid] == 0) or np.any(freqs[~valid] != 0):
        raise ModelError("valid entries must have nonzero frequency and padding must be zero")
    sums = freqs.astype(np.uint64).sum(axis=1)
    if np.any(sums != 1 << probability_bits):
        raise ModelError(f"every table must sum to 2**{probability_bits}")
    if width >= 1 << MAX_PRECISION or np.abs(offsets.astype(np.int64)).max() > 1 << 30:
        raise ModelError("tables must have < 2**24 entries and offsets within +-2**30")


def quantize_pmf(pmf: np.ndarray, probability_bits: int) -> np.ndarray:
    """Integer frequencies (uint32, all >= 1, sum ``2**probability_bits``) approximating ``pmf``.

    Floors the scaled probabilities, lifts zeros to 1, then settles the difference to the exact
    total deterministically: a deficit goes to the largest fractional remainders, a surplus is
    taken from the largest frequencies (where one unit costs the least rate).
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    total = 1 << probability_bits
    if pmf.ndim != 1 or pmf.size < 2 or pmf.size >= total:
        raise ModelError(f"a pmf needs 2..{total - 1} entries at probability_bits {probability_bits}")
    if not np.all(np.isfinite(pmf)) or pmf.min() < 0 or pmf.sum() <= 0:
        raise ModelError("a pmf must be finite, nonnegative and not all zero")
    scaled = pmf / pmf.sum() * total
    freqs = np.maximum(np.floor(scaled).astype(np.int64), 1)
    diff = total - int(freqs.sum())
    if diff > 0:
        order = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
        freqs[order[:diff]] += 1
    while diff < 0:
        order = np.argsort(-freqs, kind="stable")
        take = order[: min(-diff, int(np.count_nonzero(freqs > 1)))]
        freqs[take] -= 1
        diff += take.size
    return freqs.astype(np.uint32)


def _assemble(rows: Sequence[np.ndarray], offsets: np.ndarray, probability_bits: int) -> EntropyTables:
    """Pad the quantised rows into one (K, L) array."""
    width = max(row.size for row in rows)
    freqs = np.zeros((len(rows), width), dtype=np.uint32)
    for k, row in enumerate(rows):
        freqs[k, : row.size] = row
    lengths = np.array([row.size for row in rows], dtype=np.int32)
    return EntropyTables(freqs, lengths, np.asarray(offsets, dtype=np.int32), probability_bits)


def gaussian_tail(scale: float, tail_mass: float) -> int:
    """Half-width of the coded support: ``ceil(z * scale)`` with ``P(|X| > z) = tail_mass``."""
    z = -NormalDist().inv_cdf(tail_mass / 2)
    return max(1, math.ceil(z * float(scale)))


def _gaussian_pmf(scale: float, tail: int) -> np.ndarray:
    """Mass of the integer bins -tail..tail of N(0, scale), then the mass outside them.

    Uses the upper-tail form ``Phi((0.5-|v|)/s) - Phi((-0.5-|v|)/s)`` so that far-tail bins,
    which differ by tiny amounts, keep their relative precision.
    """
    half = np.arange(tail + 1, dtype=np.float64)  # |v| = 0..tail
    c = 1.0 / (scale * math.sqrt(2.0))
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    upper = 0.5 * erfc((half - 0.5) * c)  # P(X > |v| - 0.5)
    lower = 0.5 * erfc((half + 0.5) * c)  # P(X > |v| + 0.5)
    bins = upper - lower
    escape = 2.0 * lower[-1]
    return np.concatenate([bins[:0:-1], bins, [escape]])


def gaussian_tables(
    scale_table: np.ndarray, tail_mass: float = 1e-9, probability_bits: int = 16
) -> EntropyTables:
    """One zero-mean discretised Gaussian per scale, support ``|v| <= tail``, plus the escape."""
    scales = np.asarray(scale_table, dtype=np.float64).ravel()
    if scales.size == 0 or np.any(~np.isfinite(scales)) or scales.min() <= 0:
        raise ModelError("scale table must be a nonempty array of positive finite scales")
    if not 0 < tail_mass < 1:
        raise ModelError(f"tail_mass must be in (0, 1), got {tail_mass}")
    tails = [gaussian_tail(s, tail_mass) for s in scales]
    rows = [quantize_pmf(_gaussian_pmf(s, t), probability_bits) for s, t in zip(scales, tails)]
    return _assemble(rows, -np.array(tails, dtype=np.int64), probability_bits)


def discrete_tables(
    pmfs: Sequence[np.ndarray] | np.ndarray, offsets: np.ndarray, probability_bits: int = 16
) -> EntropyTables:
    """Tables from float pmfs (e.g. the factorized prior of z, one per channel).

    The escape gets the mass missing from each pmf, and at least one frequency unit (so
    out-of-range values stay codable even when the pmf claims to cover everything).
    """
    rows = []
    unit = 2.0**-probability_bits
    for pmf in pmfs:
        p = np.asarray(pmf, dtype=np.float64).ravel()
        if p.size == 0 or not np.all(np.isfinite(p)) or p.min() < 0:
            raise ModelError("each pmf must be a nonempty, finite, nonnegative array")
        escape = max(1.0 - float(p.sum()), unit)
        rows.append(quantize_pmf(np.append(p, escape), probability_bits))
    offsets = np.asarray(offsets).ravel()
    if offsets.shape != (len(rows),):
        raise ModelError(f"need one offset per pmf ({len(rows)}), got {offsets.shape}")
    return _assemble(rows, offsets, probability_bits)


def default_scale_table(levels: int = 64, lo: float = 0.11, hi: float = 256.0) -> np.ndarray:
    """Log-spaced scales ``lo..hi`` (float32), as CompressAI and tensorflow-compression use."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels)).astype(np.float32)


def scale_to_index(scales: np.ndarray, scale_table: np.ndarray) -> np.ndarray:
    """Table index per scale: how many of ``scale_table[:-1]`` lie strictly below the scale.

    The scale is first clamped from below to ``scale_table[0]``. This is the exact rule the
    exported graphs implement, so it is evaluated in float32 like they are; a NaN scale
    compares false everywhere and gets index 0, as it does there.
    """
    table = np.asarray(scale_table, dtype=np.float32).ravel()
    s = np.maximum(np.asarray(scales, dtype=np.float32), table[0])
    index = np.searchsorted(table[:-1], s, side="left").astype(np.int32)
    return np.where(np.isnan(s), np.int32(0), index)
