"""Defaults and checks shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ckbd.errors import UsageError


def check_writable(path: Path | None, option: str) -> None:
    """Refuse, before any work, an output whose folder is missing or read-only, or that is a folder."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")


def check_plot_path(path: Path | None, option: str = "--plot") -> None:
    """Before any work: the plot's folder is writable, matplotlib is installed and writes this suffix."""
    if path is None:
        return
    from ckbd.tools.report.plots import check_plot_format

    check_writable(path, option)
    check_plot_format(path, option)


def check_input_dir(path: Path | None, option: str) -> None:
    """An input folder given on the command line must exist."""
    if path is not None and not path.is_dir():
        raise UsageError(f"{option} {path}: no such folder")


def _set_quiet(value: bool) -> bool:
    if value:
        from ckbd.progress import set_quiet

        set_quiet(True)
    return value


#: ``--quiet``/``-q`` on a command: as ``ckbd -q COMMAND``, no progress output and no notices.
QuietOption = typer.Option(False, "--quiet", "-q", callback=_set_quiet,
                           help="No progress output or notices; results and errors are still printed.")
