"""JSON that every parser reads: non-finite numbers become ``null``.

Python's ``json`` writes ``Infinity`` and ``NaN``, which are not JSON; a lossless result has an
infinite PSNR, so every report ckbd writes goes through :func:`dumps`, where such a value is
``null`` (documented in the README as "lossless" for PSNR).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Indented, strictly valid JSON text, ending with a newline."""
    return json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, value: Any) -> None:
    """Write :func:`dumps` of ``value`` atomically."""
    from ckbd.runtime.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), dumps(value).encode())
