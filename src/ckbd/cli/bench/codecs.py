"""``ckbd bench codecs``: ckbd vs the serial-context and context-free baselines, stage by stage.

The benchmark itself is :mod:`ckbd.tools.bench`; heavy imports (torch, the benchmark) stay inside
the command body so that ``ckbd --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.tools.report.results_sections import with_hand_written


def _arch_size(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter("expected N,M, e.g. 192,320") from None
    if n < 1 or m < 1:
        raise typer.BadParameter("N and M must be positive")
    return n, m


def codecs_command(
    images: Path = typer.Option(None, "--images", help="Folder (or file) of images (default: ../shared/data/kodak)."),
    count: int = typer.Option(None, "--count", "-n", min=1, help="Time only the first N images."),
    model: Path = typer.Option(None, "--model", "-m",
                               help="Exported ckbd model for (a); default: export a random one of --arch-size."),
    json_path: Path = typer.Option(None, "--json", help="Write every measurement here."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the results table here (e.g. docs/RESULTS.md)."),
    plots: Path = typer.Option(None, "--plots", help="Folder for the stage-latency (and RD) plots."),
    arch_size: str = typer.Option("192,320", "--arch-size", help="N,M of every model (the paper's high-rate size)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads for torch and ONNX Runtime."),
    repeat: int = typer.Option(1, "--repeat", "-r", min=1, help="Timed runs per image and codec (after a warm-up)."),
    eval_json: list[Path] = typer.Option(None, "--eval-json",
                                         help="`ckbd eval --json` output to add RD results and plot (repeatable)."),
    compressai: bool = typer.Option(True, "--compressai/--no-compressai",
                                    help="Also time the same weights through CompressAI when it can be imported."),
    coder_symbols: int = typer.Option(500_000, "--coder-symbols", min=0,
                                      help="Symbols for the entropy coder benchmark (0: skip)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    only: str = typer.Option("", "--codecs",
                             help="Time only these codecs, comma-separated (default: all); e.g. "
                                  "ckbd-onnxruntime,compressai-mbt2018-ckbd for the CPU speed comparison."),
    notes: list[str] = typer.Option(None, "--note", help="A caveat to print with the results (repeatable)."),
    from_json: Path = typer.Option(None, "--from-json",
                                   help="Time nothing: re-render the table and plots from an earlier --json "
                                        "(e.g. with new --eval-json results)."),
) -> None:
    """Decode/encode latency per stage: ckbd (ONNX Runtime, torch), serial mbt2018, mbt2018-mean.

    The models are randomly initialised at --arch-size (latency does not depend on training);
    all codecs share the size, the threads, the images and the entropy coder.
    """
    from ckbd.runtime.atomic import atomic_write_bytes
    from ckbd.tools.bench.codecs.render import format_markdown, read_rd, write_plots
    from ckbd.tools.bench.codecs.report import read_report
    from ckbd.tools.bench.codecs.run import BenchConfig, run_benchmark

    rds = {path.stem: read_rd(path) for path in eval_json or []}
    if from_json is not None:
        report = read_report(from_json)
    else:
        n, m = _arch_size(arch_size)
        config = BenchConfig(images=default_images(images, count), N=n, M=m, model_dir=model, threads=threads,
                             repeat=repeat, seed=seed, compressai=compressai, coder_symbols=coder_symbols,
                             notes=list(notes or []), only=tuple(n.strip() for n in only.split(",") if n.strip()))
        report = run_benchmark(config)
    text = format_markdown(report, rds)
    typer.echo(text)
    if json_path is not None:
        atomic_write_bytes(json_path, report.to_json().encode())
        typer.echo(f"wrote {json_path}")
    if markdown is not None:
        atomic_write_bytes(markdown, with_hand_written(text, markdown).encode())
        typer.echo(f"wrote {markdown}")
    if plots is not None:
        for path in write_plots(report, plots, rds):
            typer.echo(f"wrote {path}")


def default_images(images: Path | None, count: int | None) -> list[Path]:
    """The image files to time: ``images`` (a folder or a file) or Kodak, the first ``count`` of them."""
    from ckbd.cli.batch import expand_inputs
    from ckbd.data_paths import default_kodak_dir
    from ckbd.runtime.imageio import IMAGE_SUFFIXES

    paths = expand_inputs([images if images is not None else default_kodak_dir()], IMAGE_SUFFIXES)
    return paths[:count] if count else paths


def register(group: typer.Typer) -> None:
    group.command("codecs")(codecs_command)
