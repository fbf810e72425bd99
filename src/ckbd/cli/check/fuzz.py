"""``ckbd check fuzz``: decode mutated streams in a memory-capped worker and count what happens."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def fuzz_command(
    count: int = typer.Option(10_000, "--count", min=1, help="Cases to run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mutations."),
    memory_cap: int = typer.Option(4 << 30, "--memory-cap", min=0, help="RLIMIT_AS of the worker, bytes (0: none)."),
    max_pixels: int = typer.Option(256 * 256, "--max-pixels", min=1, help="Decoder pixel limit (padded)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0, help="Seconds one case may take before it is a hang."),
    json_path: Path = typer.Option(None, "--json", help="Write the summary as JSON."),
    results: Path = typer.Option(None, "--results", help="Put the summary in this Markdown file "
                                 "(docs/RESULTS.md), replacing the previous run's section."),
    show_progress: bool = typer.Option(False, "--progress", help="Print progress every 1,000 cases."),
) -> None:
    """Decode mutated streams of tiny images under a memory cap and count what happens.

    Mutations: resealed header fields, coherent size changes, moved payload lengths, bit flips,
    truncation, trailing bytes, spliced headers; each stream is read as the CLI reads a file. Exit 1 on
    any wrong image, traceback or hang.
    """
    from ckbd.cli.options import check_writable
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.tools.check.fuzz import FuzzConfig, markdown, run, write_results_section

    check_writable(json_path, "--json")
    check_writable(results, "--results")

    def report_progress(done: int, total: int, seconds: float) -> None:
        typer.echo(f"{done}/{total} cases, {seconds:.0f} s", err=True)

    summary = run(FuzzConfig(count, seed, memory_cap, max_pixels, timeout),
                  on_progress=report_progress if show_progress else None)
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(summary.to_dict(), indent=2).encode())
    if results is not None:
        write_results_section(results, markdown(summary))
    typer.echo(markdown(summary))
    if summary.failed:
        raise CkbdError(f"{summary.failed} of {summary.cases} cases failed (wrong image, traceback or hang)")


def register(group: typer.Typer) -> None:
    group.command("fuzz")(fuzz_command)
