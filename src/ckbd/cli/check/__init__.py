"""``ckbd check``: verification runs that exit 1 when something is wrong.

Each member is one module here, ``ckbd.cli.check.<member>``, and its library has the same name under
``ckbd.tools.check``; :data:`MEMBERS` lists them (one line per command). A member module exposes
``register(group)``; heavy imports stay inside the command bodies so that ``ckbd --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

check_app = typer.Typer(help="Verification runs: round trip, determinism, GPU, tiling, hostile streams.", no_args_is_help=True)

#: The commands of the group, in help order: module name -> what it verifies.
MEMBERS: dict[str, str] = {
    "roundtrip": "encode/decode round trips over a folder",
    "determinism": "index stages bit-identical across threads and optimisation levels",
    "gpu": "GPU backends decode CPU-encoded streams",
    "fuzz": "hostile streams: one-line errors, nothing written",
    "tiling": "tiled and whole-image coding agree",
    "known_answers": "integer stages reproduce the model's known-answer vectors",
}


def register(app: typer.Typer) -> None:
    for module in MEMBERS:
        importlib.import_module(f"{__name__}.{module}").register(check_app)
    app.add_typer(check_app, name="check")
