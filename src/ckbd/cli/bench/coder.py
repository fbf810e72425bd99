"""``ckbd bench coder``: the entropy coder's throughput and rate overhead (:mod:`ckbd.tools.bench.coder`)."""

from __future__ import annotations

from pathlib import Path

import typer


def coder(
    symbols: int = typer.Option(500_000, "--symbols", min=1, help="Symbols per run."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs; medians are reported."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic latents."),
    threads: int = typer.Option(1, "--threads", min=0,
                                help="Threads coding the substreams (0: the cores this process may use)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Entropy coder throughput and rate overhead on Gaussian latents, cut into substreams as a pass is."""
    from ckbd.tools.bench.coder import measure
    from ckbd.tools.report.jsonfile import write_json
    from ckbd.tools.report.machine import machine_info

    run = measure(symbols=symbols, seed=seed, repeats=repeats, threads=threads)
    result = run.result
    rows = [
        ("symbols", f"{result.n_symbols:,}"),
        ("coded bytes", f"{result.bytes:,}"),
        ("substreams", f"{run.substreams} on {run.threads} thread{'s' * (run.threads > 1)}"),
        ("encode", f"{result.encode_msym_s:.1f} M symbols/s"),
        ("decode", f"{result.decode_msym_s:.1f} M symbols/s"),
        ("rate overhead", f"{result.overhead_pct:.3f} %"),
        ("coder", f"{run.coder}, {result.grouping} grouping"),
    ]
    for name, value in rows:
        typer.echo(f"{name:<14} {value}")
    if json_path is not None:
        report = {**run.to_dict(), "repeats": repeats, "seed": seed, "machine": machine_info()}
        write_json(json_path, report)
        typer.echo(f"wrote {json_path}")


def register(group: typer.Typer) -> None:
    group.command("coder")(coder)
