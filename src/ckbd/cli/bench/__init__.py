"""``ckbd bench``: benchmarks of ckbd's parts and of ckbd against other codecs.

One module per command (:data:`MEMBERS`), each with its library under ``ckbd.tools.bench``
(:mod:`ckbd.cli.groups`).
"""

from __future__ import annotations

import typer

from ckbd.cli.groups import register_group

bench_app = typer.Typer(help="Benchmark parts of the runtime.", no_args_is_help=True)

#: The commands of the group, one module each, in help order.
MEMBERS = ('coder', 'substreams', 'codecs', 'entropy_params', 'int8', 'ops', 'memory', 'serving')


def register(app: typer.Typer) -> None:
    register_group(app, bench_app, "bench", __name__, MEMBERS)
