"""``ckbd bench``: benchmarks of ckbd's parts and of ckbd against other codecs.

Each member is one module here, ``ckbd.cli.bench.<member>``, and its library has the same name under
``ckbd.tools.bench``; :data:`MEMBERS` lists them (one line per command). A member module exposes
``register(group)``; heavy imports stay inside the command bodies so that ``ckbd --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

bench_app = typer.Typer(help="Benchmark parts of the runtime.", no_args_is_help=True)

#: The commands of the group, in help order: module name -> what it measures.
MEMBERS: dict[str, str] = {
    "coder": "entropy coder throughput and rate overhead",
    "codecs": "ckbd against CompressAI and the serial baseline",
    "entropy_params": "integer against float entropy-parameter stages",
    "int8": "INT8 synthesis: speed and PSNR change",
    "ops": "per-operator profile of the exported graphs",
    "memory": "peak memory and time by image size",
    "serving": "Triton serving throughput and latency",
}


def register(app: typer.Typer) -> None:
    for module in MEMBERS:
        importlib.import_module(f"{__name__}.{module}").register(bench_app)
    app.add_typer(bench_app, name="bench")
