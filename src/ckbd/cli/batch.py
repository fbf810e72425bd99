"""Running one operation over many files: progress bar, per-file failures, JSON summary.

A batch with one bad file finishes the others, reports each failure on one line and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from ckbd.errors import CkbdError, UsageError
from ckbd.progress import progress
from ckbd.tools.report.jsonfile import write_json as write_json_file

#: Words that are never meant as file names: ``--psnr true`` gives a flag a value it does not take.
FLAG_VALUES = {"true", "false", "yes", "no", "on", "off"}


def expand_inputs(paths: Iterable[Path], suffixes: set[str]) -> list[Path]:
    """Files as given, directories replaced by the files with one of ``suffixes`` found in them and
    their subfolders (sorted), as ``train`` and ``calibrate`` search their folders."""
    from ckbd.runtime.imageio import find_images

    files: list[Path] = []
    for path in paths:
        if str(path).lower() in FLAG_VALUES and not path.exists():
            raise UsageError(f"'{path}' is not a file: on/off options such as --psnr take no value")
        if path.is_dir():
            files.extend(find_images(path, suffixes=suffixes))
        else:
            files.append(path)
    if not files:
        raise CkbdError("no input files")
    return files


def output_paths(inputs: list[Path], out: Path | None, suffix: str, sources: Iterable[Path] = ()) -> list[Path]:
    """One input: ``out`` is the file (default: input with ``suffix``). Several: ``out`` is a folder,
    where a file found in a subfolder of one of the ``sources`` folders keeps that subfolder."""
    if len(inputs) == 1 and out is not None and not out.is_dir():
        return [out]
    if out is None:
        return [p.with_suffix(suffix) for p in inputs]
    folders = [s for s in sources if s.is_dir()]
    targets = [out / _relative(p, folders).with_suffix(suffix) for p in inputs]
    try:
        for parent in sorted({t.parent for t in targets}):
            parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CkbdError(f"cannot create output folder {exc.filename}: {exc.strerror}") from None
    return targets


def _relative(path: Path, folders: list[Path]) -> Path:
    """``path`` below the first of ``folders`` that holds it, else its name alone."""
    for folder in folders:
        if path.is_relative_to(folder):
            return path.relative_to(folder)
    return Path(path.name)


@dataclass
class BatchReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def write_json(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        summary = {"files": self.results, "failures": [{"file": str(p), "error": e} for p, e in self.failures]}
        numeric = [r for r in self.results if "bpp" in r]
        if numeric:
            summary["mean_bpp"] = sum(r["bpp"] for r in numeric) / len(numeric)
            with_psnr = [r["psnr"] for r in numeric if r.get("psnr") is not None]
            if with_psnr:
                summary["mean_psnr"] = sum(with_psnr) / len(with_psnr)
        summary.update(extra or {})
        write_json_file(path, summary)


def describe_failure(src: Path, message: str) -> str:
    """One line naming the file once, whether or not the error message already does."""
    return message if str(src) in message else f"{src}: {message}"


def run_batch(pairs: list[tuple[Path, Path]], work: Callable[[Path, Path], dict[str, Any]], label: str,
              refused: Iterable[tuple[Path, str]] = ()) -> BatchReport:
    """Apply ``work(src, dst)`` to every pair; a CkbdError or a failed allocation fails that file only.

    ``refused`` are inputs turned down before any work (the output policy), reported the same way.
    """
    report = BatchReport()
    refused = list(refused)
    several = len(pairs) + len(refused) > 1

    def fail(src: Path, message: str) -> None:
        report.failures.append((src, message))
        if several:
            tqdm.write(f"error: {describe_failure(src, message)}", file=sys.stderr)

    for src, message in refused:
        fail(src, message)
    bar = progress(pairs, desc=label, unit="file", enabled=len(pairs) > 1)
    for src, dst in bar:
        try:
            report.results.append({"file": str(src), "output": str(dst), **work(src, dst)})
        except CkbdError as exc:
            fail(src, str(exc))
        except MemoryError:  # numpy and friends; nothing was written (outputs are atomic)
            fail(src, "out of memory: an allocation failed, nothing was written")
    return report


def finish(report: BatchReport, json_path: Path | None, extra: dict[str, Any] | None = None) -> None:
    """Write the summary, then exit 1 if anything failed (after the others were done)."""
    if json_path is not None:
        report.write_json(json_path, extra)
    if report.failures:
        if len(report.results) + len(report.failures) == 1:
            raise CkbdError(describe_failure(*report.failures[0]))
        typer.secho(f"{len(report.failures)} of {len(report.results) + len(report.failures)} files failed",
                    err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
