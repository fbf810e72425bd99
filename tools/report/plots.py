"""Plots people would rather look at than tables: per-stage latency and RD curves.

matplotlib is an optional extra (``ckbd[plots]``); it is imported only when a plot is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

from ckbd.errors import UsageError, require
from ckbd.runtime.atomic import atomic_path


def _pyplot():  # type: ignore[no-untyped-def]
    mpl = require("matplotlib", "plots", "Plotting")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_format(path: Path | None, option: str = "--plot") -> None:
    """Before any work: matplotlib is installed and writes this suffix (the CLI's ``check_plot_path``
    also checks that the folder is writable)."""
    if path is None:
        return
    require("matplotlib", "plots", "Plotting")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    if suffix not in formats:
        raise UsageError(f"{option} {path}: matplotlib cannot write .{suffix} files; use one of "
                         + ", ".join(f".{s}" for s in sorted(formats)))


def stage_bars(rows: dict[str, dict[str, float]], stages: tuple[str, ...], path: Path, title: str) -> None:
    """Stacked horizontal bars: one bar per row (e.g. decode, encode), segments in each row's own
    stage order; a stage has the same colour in every row. Keys not in ``stages`` (e.g. total) are
    ignored."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.5 * len(rows)))
    palette = plt.get_cmap("tab20").colors
    colour = {stage: palette[i % len(palette)] for i, stage in enumerate(stages)}
    labelled: set[str] = set()
    for y, times in enumerate(rows.values()):
        left = 0.0
        for stage, ms in times.items():
            if stage not in colour or ms <= 0:
                continue
            ax.barh(y, ms, left=left, color=colour[stage], label=None if stage in labelled else stage)
            labelled.add(stage)
            left += ms
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("milliseconds (median)")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    _save(fig, path)


def rd_curves(curves: dict[str, list[tuple[float, float]]], path: Path, ylabel: str = "PSNR (dB)",
              references: Collection[str] = ()) -> None:
    """Rate-distortion curves: {label: [(bpp, quality), ...]}.

    ``references`` (e.g. the Pillow sweeps, which run to 3 bpp) are dashed, and the axes are fitted to
    the other curves so that models below 1 bpp are not squashed into a corner.
    """
    curves = _finite(curves)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, points in curves.items():
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                linestyle="--" if label in references else "-", markersize=4 if label in references else 6)
    focus = [p for label, pts in curves.items() if label not in references for p in pts]
    if focus and len(focus) < sum(map(len, curves.values())):
        x_lim, y_lim = fitted_axes(focus, [p for pts in curves.values() for p in pts])
        ax.set_xlim(*x_lim)
        ax.set_ylim(*y_lim)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def saving_heatmap(grid: list[list[float | None]], path: Path, title: str) -> None:
    """A grid of rate savings in % (None: the current latent), annotated, like the paper's Figure 4."""
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(values, cmap="viridis", vmin=0.0)
    r = len(grid) // 2
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "current" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v is None or v > 0.6 * np.nanmax(values) else "white")
    ax.set_xticks(range(len(grid)), [str(d) for d in range(-r, r + 1)])
    ax.set_yticks(range(len(grid)), [str(d) for d in range(-r, r + 1)])
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="rate saving (%)")
    fig.tight_layout()
    _save(fig, path)


def _finite(curves: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """The curves without points that cannot be drawn (a lossless result's infinite PSNR), said once."""
    kept = {label: [p for p in pts if all(math.isfinite(v) for v in p)] for label, pts in curves.items()}
    dropped = sum(map(len, curves.values())) - sum(map(len, kept.values()))
    if dropped:
        from ckbd.progress import notice

        notice(f"{dropped} lossless point(s) (infinite PSNR) left out of the plot")
    return {label: pts for label, pts in kept.items() if pts}


def fitted_axes(focus: list[tuple[float, float]], every: list[tuple[float, float]]
                 ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x, y) limits: bpp from 0 to 1.5x the focus's largest, quality over every point in that span."""
    x_hi = 1.5 * max(x for x, _ in focus)
    ys = [y for x, y in every if x <= x_hi] + [y for _, y in focus]
    pad = 0.05 * (max(ys) - min(ys) or 1.0)
    return (0.0, x_hi), (min(ys) - pad, max(ys) + pad)


def _save(fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix or ".png"
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=suffix.lstrip("."), dpi=120)
    plt.close(fig)
