"""Where encode/decode may write: the output policy of gzip, ``cp -n`` and ffmpeg without ``-y``.

- An existing file is replaced only with ``--force``; a symbolic link only with ``--force``, and
  then the file it points to is replaced, not the link.
- An input, or the ``--original`` a decode is compared with, is never written over, even with
  ``--force``.
- Devices, FIFOs, sockets and directories are refused: a rename would replace them.
- Two inputs of one batch that map to the same output are an error before anything is written.
- ``-`` (and ``/dev/stdout``) is standard output.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ckbd.errors import CkbdError, UsageError
from ckbd.runtime.atomic import atomic_write_bytes, describe_mode

STDOUT_ALIASES = ("-", "/dev/stdout")


def is_stdio(path: Path | str | None) -> bool:
    from ckbd.runtime.stream_io import is_stdio as stdio  # numpy-free import of the CLI

    return stdio(path)


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) in STDOUT_ALIASES


def pair_outputs(inputs: list[Path], out: Path | None, suffix: str, sources: Iterable[Path] = ()) -> list[tuple[Path, Path]]:
    """(input, output) pairs, with ``-`` for stdin/stdout allowed only where it is unambiguous."""
    from ckbd.cli.batch import output_paths

    if any(is_stdio(p) for p in inputs) and len(inputs) > 1:
        raise UsageError("'-' (stdin) must be the only input")
    if is_stdout(out) and len(inputs) > 1:
        raise UsageError(f"-o {out} writes one file; give one input")
    if is_stdio(inputs[0]) and out is None:
        raise UsageError("reading stdin needs -o FILE, or -o - for stdout")
    if is_stdio(inputs[0]) and sys.stdin.isatty():
        raise UsageError("refusing to read binary data from a terminal; redirect stdin")
    if is_stdout(out) and sys.stdout.isatty():
        raise UsageError("refusing to write binary data to a terminal; redirect stdout or give -o FILE")
    if is_stdout(out):
        return [(inputs[0], Path(str(out)))]
    return list(zip(inputs, output_paths(inputs, out, suffix, sources)))


@dataclass
class OutputPlan:
    """The (input, output) pairs to run, and the inputs refused before any work, with the reason."""

    jobs: list[tuple[Path, Path]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def output_problem(target: Path, force: bool, protected: Iterable[Path] = ()) -> str | None:
    """Why ``target`` may not be written (None if it may)."""
    if is_stdout(target):
        return None
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot write {target}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        if not force:
            return f"{target} is a symbolic link; use --force to replace the file it points to"
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return None  # a dangling link: the file it names will be created
        except OSError as exc:
            return f"cannot write {target}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"refusing to write {target}: it is {describe_mode(st.st_mode)}, not a regular file"
    for path in protected:
        if not is_stdio(path) and _same_file(target, path):
            return f"refusing to write {target}: it is the input file {path}"
    if not force:
        return f"{target} already exists; use --force to replace it"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(pairs: Sequence[tuple[Path, Path]], force: bool,
                 protected: dict[Path, Path] | None = None) -> OutputPlan:
    """Check every output before any work; ``protected`` maps an input to its ``--original``.

    Duplicate outputs raise :class:`CkbdError` naming both inputs; every other problem refuses
    only its own input, so the rest of the batch still runs.
    """
    seen: dict[str, Path] = {}
    for src, dst in pairs:
        if is_stdout(dst):
            continue
        key = os.path.normcase(os.path.realpath(dst))
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}; "
                            "give them different names or encode them separately")
        seen[key] = src
    inputs = [src for src, _ in pairs]
    plan = OutputPlan()
    for src, dst in pairs:
        guarded = [*inputs, *([protected[src]] if protected and src in protected else [])]
        problem = output_problem(dst, force, guarded)
        if problem is None:
            plan.jobs.append((src, dst))
        else:
            plan.refused.append((src, problem))
    return plan


def check_output(target: Path | None, force: bool, inputs: Iterable[Path] = ()) -> None:
    """A report file (such as ``--json``) checked before the work starts; stdout is not one."""
    if target is None:
        return
    if is_stdout(target):
        raise UsageError(f"{target} is standard output; a report needs a file name")
    problem = output_problem(target, force, inputs)
    if problem is not None:
        raise CkbdError(problem)


def write_output(target: Path, data: bytes, force: bool) -> None:
    """Write a result: to stdout for ``-``, else atomically, replacing a file only with ``force``."""
    if is_stdout(target):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    atomic_write_bytes(target, data, replace=force)
