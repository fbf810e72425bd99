"""``ckbd bench``: micro-benchmarks of the runtime's parts.

Other modules add their own commands to :data:`bench_app`; heavy imports stay inside the
command bodies so that ``ckbd --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

bench_app = typer.Typer(help="Benchmark parts of the runtime.", no_args_is_help=True)


@bench_app.command("coder")
def coder(
    symbols: int = typer.Option(500_000, "--symbols", min=1, help="Symbols per run."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs; medians are reported."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic latents."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Entropy coder throughput (one core) and rate overhead on Gaussian latents."""
    from ckbd.tools.bench_coder import machine_info, run_coder_benchmark
    from ckbd.tools.jsonfile import write_json

    result = run_coder_benchmark(symbols=symbols, seed=seed, repeats=repeats)
    rows = [
        ("symbols", f"{result.n_symbols:,}"),
        ("coded bytes", f"{result.bytes:,}"),
        ("encode", f"{result.encode_msym_s:.1f} M symbols/s"),
        ("decode", f"{result.decode_msym_s:.1f} M symbols/s"),
        ("rate overhead", f"{result.overhead_pct:.3f} %"),
        ("grouping", result.grouping),
    ]
    for name, value in rows:
        typer.echo(f"{name:<14} {value}")
    if json_path is not None:
        report = {**result.to_dict(), "repeats": repeats, "seed": seed, "machine": machine_info()}
        write_json(json_path, report)
        typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
