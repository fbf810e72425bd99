"""ckbd: learned image codecs with a checkerboard context model, from PyTorch checkpoint to production decoder.

``ckbd.encode``, ``ckbd.decode`` and ``ckbd.info`` (see :mod:`ckbd.api`) are looked up on first use, so
``import ckbd`` loads neither numpy nor ONNX Runtime nor torch; ``import ckbd.pillow`` lets Pillow
read and write .ckbd files.
"""

__version__ = "0.1.0"

#: Names served by :mod:`ckbd.api`, imported when first asked for.
_API = ("encode", "decode", "info")

TYPE_CHECKING = False  # not typing's: importing typing would double the import time (type checkers honour this)
if TYPE_CHECKING:
    from typing import Any

    from ckbd.api import decode as decode
    from ckbd.api import encode as encode
    from ckbd.api import info as info


def __getattr__(name: str) -> "Any":
    if name in _API:
        from ckbd import api

        return getattr(api, name)
    raise AttributeError(f"module 'ckbd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
