"""Where benchmarks, training and calibration find photos when no folder is given.

The project's data folder sits next to the repository (``../shared/data`` seen from the checkout);
it is found from this file rather than from the current folder, so the defaults work from anywhere.
Library code (``tools/``, ``export/``) and the CLI share these, so none of them imports the other.
"""

from __future__ import annotations

from pathlib import Path

from ckbd.errors import CkbdError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        raise CkbdError(f"no image folder given and {path} does not exist; pass one explicitly")
    return path


def default_train_dir() -> Path:
    """``../shared/data/train``: photos for training and calibration."""
    return _shared("train")


def default_kodak_dir() -> Path:
    """``../shared/data/kodak``: the 24 Kodak test images."""
    return _shared("kodak")
