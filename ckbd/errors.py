"""ckbd's own exceptions.

Everything a user can cause (bad input, wrong model, missing extra) raises a subclass of
:class:`CkbdError`; the CLI maps exactly these to a one-line message and exit code 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CkbdError(Exception):
    """Base class for errors a user can act on."""


class BitstreamError(CkbdError):
    """A bitstream is truncated, corrupt, of another version, or larger than allowed."""


class ModelMismatchError(CkbdError):
    """A bitstream or engine was made for a different model than the one loaded."""


class ModelError(CkbdError):
    """A checkpoint, model directory or manifest cannot be loaded."""


class ImageError(CkbdError):
    """An input image cannot be read or has an unsupported format."""


class MissingDependencyError(CkbdError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"pip install 'ckbd[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str):  # type: ignore[no-untyped-def]
    """Import an optional module lazily, turning ImportError into a message that names the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
