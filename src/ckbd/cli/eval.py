"""``ckbd eval``: rate-distortion of ckbd models against JPEG and WebP on a set of images."""

from __future__ import annotations

from pathlib import Path

import typer

from ckbd.cli.codec_options import ThreadsOption
from ckbd.cli.options import QuietOption


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def _qualities(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter("expected comma-separated integers, e.g. 5,10,30,50,70,90") from None
    if not values or any(not 1 <= v <= 100 for v in values):
        raise typer.BadParameter("qualities must lie in 1..100")
    return sorted(set(values))


def eval_command(
    images: list[Path] = typer.Argument(None, help="Images or folders (default: ../shared/data/kodak)."),
    models: list[Path] = typer.Option(None, "--model", "-m",
                                      help="Exported model directory, or a checkpoint (torch; also the mbt2018/mbt2018-mean "
                                           "baselines); repeat for an RD curve (default: the shipped model)."),
    json_path: Path = typer.Option(None, "--json", help="Write per-image and averaged results here."),
    plot: Path = typer.Option(None, "--plot", help="RD plot, PSNR vs bpp with the JPEG/WebP curves (PNG/SVG/PDF)."),
    html: Path = typer.Option(None, "--html",
                              help="Folder for a self-contained comparison page (index.html and the images it shows): "
                                   "RD curves, results, and each image beside JPEG and WebP at the closest bpp."),
    qualities: str = typer.Option("5,10,20,30,40,50,60,70,80,90,95", "--qualities",
                                  help="Pillow quality sweep for JPEG and WebP."),
    threads: int = ThreadsOption,
    curve: bool = typer.Option(False, "--curve",
                               help="The models form an RD curve (e.g. a λ sweep): join those of one architecture "
                                    "in the plot. Without it every model is its own labelled point."),
    quiet: bool = QuietOption,
) -> None:
    """bpp (from the actual bytes), PSNR and MS-SSIM of each model, compared with JPEG and WebP.

    One model gives one RD point: it is compared at equal bpp (Pillow curves interpolated). With
    four or more models of one architecture the BD-rate (PSNR) against each Pillow curve is added.
    A lossless result has an infinite PSNR: "inf" in the table, null in the JSON, left out of the plot.
    --html DIR writes DIR/index.html, which needs no network: open it in any browser.
    """
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import check_plot_path, check_writable
    from ckbd.data_paths import default_kodak_dir
    from ckbd.runtime.imageio import IMAGE_SUFFIXES
    from ckbd.tools.rd_eval import evaluate, format_table, plot_rd
    from ckbd.tools.report.jsonfile import write_json

    sweep = _qualities(qualities)
    check_writable(json_path, "--json")
    check_plot_path(plot)
    _check_html_folder(html)
    paths = expand_inputs(images or [default_kodak_dir()], IMAGE_SUFFIXES)
    page = None
    if html is not None:
        from ckbd.tools.eval_html import ComparisonPage

        page = ComparisonPage(html)
    report = evaluate(paths, list(models) if models else [None], sweep, threads=threads,
                      on_image=None if page is None else page.add)
    typer.echo(format_table(report))
    if json_path is not None:
        write_json(json_path, report.to_dict())
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        plot_rd(report, plot, join=curve)
        typer.echo(f"wrote {plot}")
    if page is not None:
        typer.echo(f"wrote {page.write(report, join=curve)}")


def _check_html_folder(folder: Path | None) -> None:
    """Before any work: ``--html`` names a folder that exists or can be made in a writable one."""
    from ckbd.cli.options import check_writable
    from ckbd.errors import UsageError

    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--html {folder}: is a file; give a folder for the page and its images")
    check_writable(folder / "index.html" if folder.is_dir() else folder, "--html")
