"""``ckbd check``: verification runs that exit 1 when something is wrong.

One module per command (:data:`MEMBERS`), each with its library under ``ckbd.tools.check``
(:mod:`ckbd.cli.groups`).
"""

from __future__ import annotations

import typer

from ckbd.cli.groups import register_group

check_app = typer.Typer(help="Verification runs: round trip, determinism, GPU, tiling, hostile streams, known answers.", no_args_is_help=True)

#: The commands of the group, one module each, in help order.
MEMBERS = ('roundtrip', 'determinism', 'gpu', 'fuzz', 'tiling', 'known_answers')


def register(app: typer.Typer) -> None:
    register_group(app, check_app, "check", __name__, MEMBERS)
