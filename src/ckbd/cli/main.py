"""Root of the ``ckbd`` command: assembles the command groups and maps errors to exit codes.

This is the single place where an error becomes a one-line message and an exit code:

====  ==================================================================================
0     success
1     failure: bad input file, wrong model, missing extra, an output that exists (without --force),
      a file of a batch that failed
2     usage: the parser's errors and ckbd's own argument checks (:class:`UsageError`)
130   interrupted (Ctrl-C); 128 + N after signal N (a training run saves first)
====  ==================================================================================

Tracebacks are shown only with ``--debug`` (anywhere on the line) or ``CKBD_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ckbd.errors import CkbdError, Interrupted, UsageError, missing_extra

app = typer.Typer(
    name="ckbd",
    help="Checkerboard-context learned image codecs: train, export, build engines, encode, decode, profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module (or group package: bench, check) exposes ``register(app)``. None imports torch, onnx or onnxruntime at module level:
# they import heavy dependencies inside the command bodies, so `ckbd --help` stays fast.
COMMAND_MODULES = (
    "codec", "info", "train", "export_cmd", "profile", "bench", "build", "calibrate", "eval", "study", "serve",
    "check", "ship",
)

_state = {"debug": False}


def _show_version(value: bool) -> None:
    if value:
        from ckbd import __version__
        from ckbd.runtime.bitstream import FORMAT_VERSION

        typer.echo(f"ckbd {__version__} (writes bitstream version {FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors (also after the command)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output or notices (most commands also take -q after their name)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Show the version and the bitstream version it writes."),
) -> None:
    _state["debug"] = _state["debug"] or debug or _debug_env()
    if quiet:
        from ckbd.progress import set_quiet

        set_quiet(True)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"ckbd.cli.{name}").register(app)


_register_all()


def _debug_env() -> bool:
    return os.environ.get("CKBD_DEBUG", "") not in ("", "0")


def _take_debug(args: list[str]) -> list[str]:
    """Remove ``--debug`` wherever it stands (before a ``--``), so it works after the command too."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:end]:
        _state["debug"] = True
    return [a for a in args[:end] if a != "--debug"] + args[end:]


def _error(message: str, prefix: str = "error: ") -> None:
    """One line on stderr, printed through tqdm so that it never lands on a progress bar."""
    from tqdm import tqdm

    line = f"{prefix}{message}"
    tqdm.write(typer.style(line, fg=typer.colors.RED) if sys.stderr.isatty() else line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (the module docstring lists them)."""
    from ckbd.progress import set_quiet

    _state["debug"] = False
    set_quiet(False)  # both are per run: main() may be called more than once in a process (tests)
    args = _take_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        result = app(args=args, prog_name="ckbd", standalone_mode=False)
    except typer.TyperException as exc:  # the parser's own errors, e.g. an unknown option
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # click prints the help
            return 2
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _error(f"{exc.format_message()}{hint}")
        return int(exc.exit_code)
    except typer.Abort:
        _error("aborted")
        return 1
    except Interrupted as exc:  # the job saved its state: not an error, but not a success either
        _error(str(exc), prefix="")
        return 128 + exc.signum
    except CkbdError as exc:
        if _state["debug"] or _debug_env():
            raise
        _error(str(exc))
        return 2 if isinstance(exc, UsageError) else 1
    except ImportError as exc:  # an optional package missing wherever a command imports it
        missing = missing_extra(exc)
        if missing is None or _state["debug"] or _debug_env():
            raise
        _error(str(missing))
        return 1
    return result if isinstance(result, int) else 0


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: exits with :func:`main`'s code."""
    sys.exit(main(argv))
