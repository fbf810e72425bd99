"""Checkerboard geometry: masks and the packed layout the runtime codes in.

A latent of shape (B, C, h, w) splits into two halves of shape (B, C, h, w/2): row i keeps, in
column order, the positions of that half. Packing and unpacking are slices, stacks and reshapes
only, so they export to ONNX with dynamic sizes and cost next to nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor


def first_columns(half: str, parity: str) -> tuple[int, int]:
    """Column offset of ``half`` ("anchor"/"nonanchor") in even rows and in odd rows."""
    anchor_even_row = 0 if parity == "even" else 1
    even_row = anchor_even_row if half == "anchor" else 1 - anchor_even_row
    return even_row, 1 - even_row


def pack(y: Tensor, half: str, parity: str) -> Tensor:
    """(B, C, h, w) -> (B, C, h, w/2): the positions of one half, row by row."""
    c_even, c_odd = first_columns(half, parity)
    even_rows = y[:, :, 0::2, c_even::2]
    odd_rows = y[:, :, 1::2, c_odd::2]
    return torch.stack((even_rows, odd_rows), dim=3).flatten(2, 3)


def unpack(anchor: Tensor, nonanchor: Tensor, parity: str) -> Tensor:
    """Inverse of :func:`pack` applied to both halves: (B, C, h, w/2) x 2 -> (B, C, h, w)."""
    a_even, _ = first_columns("anchor", parity)
    rows = []
    for r in (0, 1):
        a_rows, n_rows = anchor[:, :, r::2], nonanchor[:, :, r::2]
        anchor_first = (a_even == 0) == (r == 0)
        pair = (a_rows, n_rows) if anchor_first else (n_rows, a_rows)
        rows.append(torch.stack(pair, dim=-1).flatten(-2))
    return torch.stack(rows, dim=3).flatten(2, 3)


def anchor_mask(h: int, w: int, parity: str, device: torch.device | None = None) -> Tensor:
    """(1, 1, h, w) float mask that is 1 at anchor positions."""
    rows = torch.arange(h, device=device).reshape(-1, 1)
    cols = torch.arange(w, device=device).reshape(1, -1)
    want = 0 if parity == "even" else 1
    return (((rows + cols) % 2) == want).float().reshape(1, 1, h, w)
