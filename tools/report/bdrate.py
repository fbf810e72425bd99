"""Bjøntegaard delta metrics (VCEG-M33): average rate or quality difference between two RD curves.

BD-rate fits log(rate) as a cubic polynomial of PSNR for each curve, integrates both fits over
the PSNR interval the curves share, and turns the mean log-rate difference into a percentage:
negative means the test codec needs that much *less* rate for the same quality. BD-PSNR is the
same with the roles swapped (PSNR as a cubic of log rate, mean dB difference).

A cubic has four coefficients, so each curve needs at least four points with distinct qualities;
fewer raises :class:`ValueError` (callers report "PSNR at equal bpp" instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MIN_POINTS = 4


def _prepare(rate: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError(f"{name}: rate and quality must be 1-d and of equal length")
    if r.size < MIN_POINTS or np.unique(q).size < MIN_POINTS:
        raise ValueError(f"{name}: BD metrics need at least {MIN_POINTS} points with distinct quality")
    if np.any(r <= 0) or not np.all(np.isfinite(r)) or not np.all(np.isfinite(q)):
        raise ValueError(f"{name}: rates must be positive and all values finite")
    return np.log(r), q


def _mean_over(poly: np.ndarray, lo: float, hi: float) -> float:
    integral = np.polyint(poly)
    return float((np.polyval(integral, hi) - np.polyval(integral, lo)) / (hi - lo))


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if hi <= lo:
        raise ValueError("the two curves do not overlap on the integration axis")
    return float(lo), float(hi)


def bd_rate(ref_rate: Sequence[float], ref_psnr: Sequence[float],
            test_rate: Sequence[float], test_psnr: Sequence[float]) -> float:
    """Average rate difference of ``test`` vs ``ref`` at equal PSNR, in percent."""
    log_r1, q1 = _prepare(ref_rate, ref_psnr, "reference")
    log_r2, q2 = _prepare(test_rate, test_psnr, "test")
    lo, hi = _overlap(q1, q2)
    p1, p2 = np.polyfit(q1, log_r1, 3), np.polyfit(q2, log_r2, 3)
    diff = _mean_over(p2, lo, hi) - _mean_over(p1, lo, hi)
    return (math.exp(diff) - 1.0) * 100.0


def bd_psnr(ref_rate: Sequence[float], ref_psnr: Sequence[float],
            test_rate: Sequence[float], test_psnr: Sequence[float]) -> float:
    """Average PSNR difference of ``test`` vs ``ref`` at equal rate, in dB."""
    log_r1, q1 = _prepare(ref_rate, ref_psnr, "reference")
    log_r2, q2 = _prepare(test_rate, test_psnr, "test")
    lo, hi = _overlap(log_r1, log_r2)
    p1, p2 = np.polyfit(log_r1, q1, 3), np.polyfit(log_r2, q2, 3)
    return _mean_over(p2, lo, hi) - _mean_over(p1, lo, hi)
