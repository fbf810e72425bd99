"""ckbd's own exceptions.

Everything a user can cause (bad input, wrong model, missing extra) raises a subclass of
:class:`CkbdError`; the CLI maps exactly these to a one-line message and an exit code (1, or 2
for a :class:`UsageError`, 128 + signal for :class:`Interrupted`; see ``ckbd.cli.main``).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CkbdError(Exception):
    """Base class for errors a user can act on."""


class UsageError(CkbdError):
    """The command line asks for something impossible (a value out of range, an output that
    cannot be written, a conflicting option); found before any work starts. Exit code 2."""


class OutputExistsError(CkbdError):
    """An output file exists and the command was not told to replace it (``--force``). Exit code 1
    for every command: the command line is valid, the file is refused, as one file of a batch is."""


class Interrupted(CkbdError):
    """A long job stopped on a signal after saving what it had (exit code 128 + the signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class BitstreamError(CkbdError):
    """A bitstream is truncated, corrupt, of another version, or larger than allowed."""


class ModelMismatchError(CkbdError):
    """A bitstream or engine was made for a different model than the one loaded."""


class ModelError(CkbdError):
    """A checkpoint, model directory or manifest cannot be loaded."""


class ImageError(CkbdError):
    """An input image cannot be read or has an unsupported format."""


class MemoryBudgetError(CkbdError):
    """A job would need more memory than the budget allows, even in tiles; refused before allocating."""


class ResourceError(CkbdError):
    """The machine ran out of memory during a job (an allocation failed); nothing was written."""


class MissingDependencyError(CkbdError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        # ckbd is installed from a checkout, not from the package index; TensorRT's wheels come
        # from NVIDIA's index.
        hint = " --extra-index-url https://pypi.nvidia.com" if package == "tensorrt" else ""
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"pip install '.[{extra}]'{hint} (in the ckbd checkout)"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str):  # type: ignore[no-untyped-def]
    """Import an optional module lazily, turning ImportError into a message that names the extra.

    The one way ckbd imports an optional dependency. ``module`` may also be one of ckbd's own
    modules that imports the dependency at its top (e.g. the torch backend): the message then
    names the package that is actually missing. A broken ckbd module is a bug and keeps its error.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".")[0]
        if missing == "ckbd":
            raise
        raise MissingDependencyError(missing, extra, purpose) from exc


def installed(module: str) -> bool:
    """Whether an optional module can be imported (for choosing what to run, not for failing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: Optional top-level packages and the extra that installs each.
EXTRAS = {"torch": "export", "onnx": "export", "matplotlib": "plots", "tensorrt": "gpu", "cuda": "gpu",
          "pycuda": "gpu"}


def missing_extra(exc: ImportError) -> MissingDependencyError | None:
    """The one-line error for an ImportError of an optional package (None for anything else)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in EXTRAS:
        return None
    return MissingDependencyError(name, EXTRAS[name], "this command")
