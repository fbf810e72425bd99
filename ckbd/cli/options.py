"""Defaults shared by several commands."""

from __future__ import annotations

from pathlib import Path

from ckbd.errors import CkbdError

SHARED_DATA = Path("../shared/data")


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        raise CkbdError(f"no image folder given and {path} does not exist; pass one explicitly")
    return path


def default_train_dir() -> Path:
    return _shared("train")


def default_kodak_dir() -> Path:
    return _shared("kodak")
