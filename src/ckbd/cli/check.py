"""``ckbd check``: one-off verification runs (round trip, determinism, GPU, tiling, fuzzing).

Other modules add their commands to :data:`check_app`; heavy imports stay inside the command
bodies so that ``ckbd --help`` stays fast. Errors go through the CLI's one exit-code mapping.
"""

from __future__ import annotations

import typer

check_app = typer.Typer(help="Verification runs: round trip, determinism, GPU, tiling, hostile streams.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(check_app, name="check")
