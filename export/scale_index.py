"""Exact scale-index rules for the exported parameter graphs, faster than one comparison per entry.

Every rule here computes :func:`ckbd.models.entropy.scale_indexes` (how many of ``table[:-1]`` a
scale exceeds) exactly; they differ only in how many operations the graph needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ckbd.export.stage_modules import ScaleIndex


class SortedTableIndex(nn.Module):
    """Scale indexes by a branch-free binary search over a sorted table.

    Same rule as :class:`~ckbd.export.stage_modules.ScaleIndex` (how many of ``table[:-1]`` the
    scale exceeds, NaN -> 0) with ``log2(K)`` gather/compare steps instead of ``K - 1``
    comparisons that materialise a (K-1)-times larger boolean tensor (3x faster on ORT).
    """

    thresholds: Tensor

    def __init__(self, scale_table: Tensor, strict: bool = True) -> None:
        super().__init__()
        thresholds = scale_table[:-1].to(torch.float32)
        # Equal neighbours (strict=False: the integer path's coarse thresholds) count the same way.
        increasing = thresholds[1:] > thresholds[:-1] if strict else thresholds[1:] >= thresholds[:-1]
        if not bool(torch.all(increasing)):
            raise ValueError("binary search needs an increasing scale table")
        steps = 1 << max(0, math.ceil(math.log2(thresholds.numel() + 1)))
        padded = torch.full((steps,), float("inf"))
        padded[: thresholds.numel()] = thresholds
        self.register_buffer("thresholds", padded)  # one past the last real threshold is +inf
        self.steps = [steps >> k for k in range(1, steps.bit_length())]

    def forward(self, scales: Tensor) -> Tensor:
        index = torch.zeros_like(scales, dtype=torch.int32)
        for step in self.steps:
            candidate = index + step
            index = torch.where(scales > self.thresholds[candidate - 1], candidate, index)
        return index


class LogTableIndex(nn.Module):
    """Scale indexes of a (near-)geometric table: a log-linear guess, then an exact +-1 fix.

    For a log-spaced table the index is ``ceil((ln s - ln t0) / step)``; in float32 that guess can
    be one off next to a threshold, so it is corrected with two comparisons against the real
    thresholds around it. The result is exactly the comparison-count rule (NaN -> 0, +inf -> K-1)
    for every input; only the guess uses the geometry, and the constructor refuses tables whose
    entries stray more than :data:`MAX_LOG_DEVIATION` steps from it. 10x faster than the
    comparison count and 3x faster than the binary search on ORT.
    """

    MAX_LOG_DEVIATION = 0.25
    bounds: Tensor
    lowest: Tensor
    highest: Tensor

    def __init__(self, scale_table: Tensor) -> None:
        super().__init__()
        table = scale_table.to(torch.float32)
        k = table.numel()
        if k < 2 or not bool(torch.all(table[1:] > table[:-1])) or float(table[0]) <= 0:
            raise ValueError("needs a strictly increasing, positive scale table")
        logs = torch.log(table.double())
        self.log_first = float(logs[0])
        self.inv_step = float((k - 1) / (logs[-1] - logs[0]))
        deviation = ((logs - logs[0]) * self.inv_step - torch.arange(k, dtype=torch.float64)).abs().max()
        if float(deviation) > self.MAX_LOG_DEVIATION:
            raise ValueError(f"scale table is not log-spaced (deviation {float(deviation):.2f} steps)")
        bounds = torch.empty(k + 1)  # bounds[i] < s <= bounds[i + 1]  <=>  index i
        bounds[0], bounds[k] = -float("inf"), float("inf")
        bounds[1:k] = table[:-1]
        self.register_buffer("bounds", bounds)
        self.register_buffer("lowest", table[:1].clone())
        self.register_buffer("highest", table[-1:].clone())
        self.last = k - 1

    def forward(self, scales: Tensor) -> Tensor:
        s = torch.where(scales > self.lowest, scales, self.lowest)  # NaN, <= t0 -> t0: index 0
        s = torch.where(s < self.highest, s, self.highest)  # beyond the table (inf): index K-1
        guess = torch.ceil((torch.log(s) - self.log_first) * self.inv_step)
        guess = guess.clamp(0, self.last).to(torch.int32)
        down = (s <= self.bounds[guess]).to(torch.int32)
        up = (s > self.bounds[guess + 1]).to(torch.int32)
        return guess - down + up


def fast_indexer(scale_table: Tensor) -> nn.Module:
    """The fastest exact index rule the table allows (log guess, binary search, comparisons)."""
    for kind in (LogTableIndex, SortedTableIndex):
        try:
            return kind(scale_table)
        except ValueError:
            continue
    return ScaleIndex(scale_table)
