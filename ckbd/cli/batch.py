"""Running one operation over many files: progress bar, per-file failures, JSON summary.

A batch with one bad file finishes the others, reports each failure on one line and exits 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from ckbd.errors import CkbdError
from ckbd.runtime.atomic import atomic_write_bytes


def expand_inputs(paths: Iterable[Path], suffixes: set[str]) -> list[Path]:
    """Files as given, directories replaced by their files with one of ``suffixes`` (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise CkbdError(f"{path} holds no {'/'.join(sorted(suffixes))} files")
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise CkbdError("no input files")
    return files


def output_paths(inputs: list[Path], out: Path | None, suffix: str) -> list[Path]:
    """One input: ``out`` is the file (default: input with ``suffix``). Several: ``out`` is a folder."""
    if len(inputs) == 1 and out is not None and not out.is_dir():
        return [out]
    if out is None:
        return [p.with_suffix(suffix) for p in inputs]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CkbdError(f"cannot create output folder {out}: {exc.strerror}") from None
    return [out / (p.stem + suffix) for p in inputs]


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
        atomic_write_bytes(path, json.dumps(summary, indent=2).encode())


def describe_failure(src: Path, message: str) -> str:
    """One line naming the file once, whether or not the error message already does."""
    return message if str(src) in message else f"{src}: {message}"


def run_batch(pairs: list[tuple[Path, Path]], work: Callable[[Path, Path], dict[str, Any]], label: str) -> BatchReport:
    """Apply ``work(src, dst)`` to every pair; a CkbdError fails that file only."""
    report = BatchReport()
    bar = tqdm(pairs, desc=label, unit="file", disable=len(pairs) < 2, dynamic_ncols=True)
    for src, dst in bar:
        try:
            report.results.append({"file": str(src), "output": str(dst), **work(src, dst)})
        except CkbdError as exc:
            report.failures.append((src, str(exc)))
            if len(pairs) > 1:
                tqdm.write(f"error: {describe_failure(src, str(exc))}", file=sys.stderr)
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
