"""``ckbd profile``: per-stage encode/decode latency."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.codec_options import (
    BackendOption,
    CoderThreadsOption,
    DeviceOption,
    ModelOption,
    PrecisionOption,
    ThreadsOption,
    open_codec,
)
from ckbd.cli.options import QuietOption, check_plot_path, check_writable


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)


def profile_command(
    images: list[Path] = typer.Argument(..., help="Images or folders of images."),
    model: Path = ModelOption,
    backend: str = BackendOption,
    threads: int = ThreadsOption,
    coder_threads: int = CoderThreadsOption,
    precision: str = PrecisionOption,
    device: str = DeviceOption,
    peak: bool = typer.Option(False, "--peak/--no-peak",
                              help="Also count the convolution work of the image stages and measure the machine's "
                                   "peak (a matrix-product probe): GFLOP/s per stage, and how far from the limit."),
    repeat: int = typer.Option(5, "--repeat", "-r", min=1, help="Timed repeats per image (after one warm-up)."),
    json_path: Path = typer.Option(None, "--json", help="Write per-image and mean stage times (ms)."),
    plot: Path = typer.Option(None, "--plot", help="Stacked bar chart of the mean stage times (PNG/SVG/PDF)."),
    quiet: bool = QuietOption,
) -> None:
    """Median per-stage latency of encoding and decoding, like the paper's Table 3."""
    from ckbd.cli.batch import expand_inputs
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import IMAGE_SUFFIXES
    from ckbd.runtime.profiling import DECODE_STAGES, ENCODE_STAGES
    from ckbd.tools.profile_codec import format_table, profile_images
    from ckbd.tools.report.jsonfile import write_json

    check_writable(json_path, "--json")
    check_plot_path(plot)
    paths = expand_inputs(images, IMAGE_SUFFIXES)
    # timed: a torch stage waits for its device work, so its row is its own time, not the next one's
    encoder = open_codec(Encoder, model, backend, threads, precision, device=device, timed=True,
                         coder_threads=coder_threads)
    decoder = open_codec(Decoder, model, backend, threads, precision, device=device, timed=True,
                         coder_threads=coder_threads)
    report = profile_images(encoder, decoder, paths, repeat)
    report.precision, report.device = precision, device or "cpu"
    if peak:
        from ckbd.tools.profile_codec import add_compute_rates

        add_compute_rates(report, decoder, threads)
    typer.echo(format_table(report))
    if json_path is not None:
        write_json(json_path, report.to_dict())
    if plot is not None:
        from ckbd.tools.report.plots import stage_bars

        stages = tuple(dict.fromkeys(DECODE_STAGES + ENCODE_STAGES))
        rows = {"decode": report.mean("decode_ms"), "encode": report.mean("encode_ms")}
        stage_bars(rows, stages, plot, f"{report.arch} N={report.N} M={report.M} on {report.backend}")
