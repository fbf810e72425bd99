"""``ckbd bench memory``: time and peak memory of large images, whole and tiled, and batch throughput.

The measuring logic is :mod:`ckbd.tools.bench.memory.run`; each command here parses options and calls it.
Every measurement runs in a child process under an RSS cap, so a run that overshoots is killed, not
the machine.
"""

from __future__ import annotations

from pathlib import Path

import typer

memory_app = typer.Typer(help="Time and peak memory of large images, whole and tiled (docs/RESULTS.md).",
                         no_args_is_help=True)

JsonOption = typer.Option(..., "--json", help="Write the results here (render reads them back).")


def _bytes(text: str) -> int:
    from ckbd.runtime.memory import parse_memory

    return parse_memory(text)


def _size(text: str) -> tuple[int, int]:
    from ckbd.runtime.image_size import parse_size

    size = parse_size(text)
    return size.height, size.width


@memory_app.command("run")
def run_command(
    model: list[str] = typer.Option([], "--model", metavar="LABEL:DIR:BUDGET",
                                    help="e.g. 'N=192 M=320:/tmp/m:4G' (repeatable; default: the shipped model, "
                                         "budget 1.5G)."),
    sizes: str = typer.Option("768x512,1080p,4K,8K", "--sizes", help="Comma-separated sizes."),
    cap: str = typer.Option("7G", "--cap", help="Kill a child whose resident set passes this."),
    whole_limit: str = typer.Option("5G", "--whole-limit", help="Make no whole-image run estimated above this."),
    json_path: Path = JsonOption,
) -> None:
    """Encode and decode at each size, whole and within the model's budget; time and peak RSS."""
    from ckbd.errors import UsageError
    from ckbd.tools.bench.memory.run import SIZES, run_sizes, with_machine

    specs = [spec.split(":") for spec in model or ["shipped N=64 M=96::1.5G"]]
    if any(len(spec) != 3 for spec in specs):
        raise UsageError("--model takes LABEL:DIR:BUDGET (DIR empty for the shipped model)")
    names = sizes.split(",")
    if unknown := [n for n in names if n not in SIZES]:
        raise UsageError(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    models = {label: (folder, budget) for label, folder, budget in specs}
    with_machine(run_sizes(models, names, _bytes(cap), _bytes(whole_limit)), json_path)


@memory_app.command("roundtrip")
def roundtrip_command(
    size: str = typer.Argument(..., help="HxW, e.g. 9000x12000."),
    model: str = typer.Option("", "--model", help="Model folder (default: the shipped model)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget (default: the machine's default budget)."),
    cap: str = typer.Option("14G", "--cap", help="Kill a child whose resident set passes this."),
    max_pixels: int = typer.Option(None, "--max-pixels", min=1, help="Raise the codec's pixel limit for this run."),
    json_path: Path = JsonOption,
) -> None:
    """Encode and decode one large image (a resized Kodak photo); time, peak RSS and PSNR."""
    from ckbd.tools.bench.memory.run import roundtrip, with_machine

    height, width = _size(size)
    with_machine(roundtrip(height, width, model, max_memory, _bytes(cap), max_pixels), json_path)


@memory_app.command("stages")
def stages_command(
    size: str = typer.Argument(..., help="HxW, e.g. 4320x7680."),
    model: str = typer.Option("", "--model", help="Model folder (default: the shipped model)."),
    label: str = typer.Option("", "--label", help="The model's name in the report (default: the folder)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget (default: the machine's default budget)."),
    entropy_only: bool = typer.Option(False, "--entropy-only",
                                      help="Replace the transforms by random latents (the whole-latent stages only)."),
    cap: str = typer.Option("14G", "--cap", help="Kill a child whose resident set passes this."),
    json_path: Path = JsonOption,
) -> None:
    """Resident set before, during and after each stage of one encode and one decode: where the peak is."""
    from ckbd.tools.bench.memory.run import stage_peaks, with_machine

    height, width = _size(size)
    result = stage_peaks(height, width, model, max_memory, _bytes(cap), entropy_only)
    with_machine({"model": label or model or "shipped", **result}, json_path)


@memory_app.command("batch")
def batch_command(
    images: Path = typer.Argument(..., help="Folder of images to encode, then decode."),
    jobs: int = typer.Option(2, "--jobs", min=2, help="Workers of the parallel run."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads of both runs in total."),
    json_path: Path = JsonOption,
) -> None:
    """`ckbd decode` of a folder: sequential against --jobs, outputs compared byte for byte."""
    from ckbd.tools.bench.memory.run import run_batch_throughput, with_machine

    with_machine(run_batch_throughput(images, jobs, threads), json_path)


@memory_app.command("fit")
def fit_command(
    models: list[str] = typer.Argument(None, help="Model folders (none: the shipped model)."),
    cap: str = typer.Option("6G", "--cap", help="Kill a child whose resident set passes this."),
    sizes: str = typer.Option("512x768,1024x1536", "--sizes", help="The two sizes, HxW,HxW."),
    terms: str = typer.Option(",".join(("analysis", "latent_synthesis", "encode_entropy", "decode_entropy")),
                              "--terms", help="Comma-separated cost terms to measure."),
    json_path: Path = JsonOption,
) -> None:
    """Per-pixel cost of each stage at two sizes per model (the inputs of ckbd.runtime.memory.COSTS)."""
    from ckbd.errors import UsageError
    from ckbd.tools.bench.memory.run import FIT_TERMS, fit, with_machine

    pair = tuple(_size(size) for size in sizes.split(","))
    if len(pair) != 2:
        raise UsageError(f"--sizes '{sizes}' is not two HxW sizes, e.g. 2160x3840,4320x7680")
    chosen = tuple(terms.split(","))
    if unknown := [t for t in chosen if t not in FIT_TERMS]:
        raise UsageError(f"unknown term(s) {', '.join(unknown)}; choose from {', '.join(FIT_TERMS)}")
    with_machine(fit(models or [""], _bytes(cap), pair, chosen), json_path)  # type: ignore[arg-type]


@memory_app.command("render")
def render_command(
    run: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON of `ckbd bench memory run`."),
    fit: list[Path] = typer.Option([], "--fit", exists=True, dir_okay=False, help="JSON of `fit` (repeatable)."),
    batch: Path = typer.Option(None, "--batch", exists=True, dir_okay=False, help="JSON of `batch`."),
    roundtrip: Path = typer.Option(None, "--roundtrip", exists=True, dir_okay=False, help="JSON of `roundtrip`."),
    tiling: Path = typer.Option(None, "--tiling", exists=True, dir_okay=False, help="JSON of `ckbd check tiling`."),
    stages: list[Path] = typer.Option([], "--stages", exists=True, dir_okay=False,
                                      help="JSON of `stages` (repeatable)."),
    note: list[str] = typer.Option([], "--note", help="A line for the section's notes (repeatable)."),
    markdown: Path = typer.Option(Path("docs/RESULTS.md"), "--markdown", help="The results file to update."),
) -> None:
    """Write the large-images section of docs/RESULTS.md from the other commands' JSON files."""
    from ckbd.tools.bench.memory.report import render_report

    render_report(run, fit, batch, roundtrip, tiling, note, markdown, stages)
    typer.echo(f"wrote {markdown}")


def register(group: typer.Typer) -> None:
    group.add_typer(memory_app, name="memory")
