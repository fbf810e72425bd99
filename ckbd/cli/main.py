"""Root of the ``ckbd`` command: assembles the command groups and maps ckbd's errors to exit codes.

This is the single place where a :class:`~ckbd.errors.CkbdError` becomes a one-line message and
exit code 1. Tracebacks are shown only with ``--debug`` or ``CKBD_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ckbd.errors import CkbdError

app = typer.Typer(
    name="ckbd",
    help="Checkerboard-context learned image codecs: train, export, build engines, encode, decode, profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes ``register(app)``. None imports torch, onnx or onnxruntime at module level:
# they import heavy dependencies inside the command bodies, so `ckbd --help` stays fast.
COMMAND_MODULES = (
    "codec", "info", "train", "export_cmd", "profile", "bench", "bench_codecs", "build", "calibrate", "eval",
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug or os.environ.get("CKBD_DEBUG", "") not in ("", "0")


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"ckbd.cli.{name}").register(app)


_register_all()


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point. typer handles usage errors; ckbd's own errors are mapped here."""
    try:
        app(args=argv)
    except CkbdError as exc:
        if _state["debug"] or os.environ.get("CKBD_DEBUG", "") not in ("", "0"):
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
