"""Command groups (``ckbd bench``, ``ckbd check``): a package whose ``MEMBERS`` names one module per command.

Each member module lives in the group's package, exposes ``register(group)``, and keeps its heavy imports
inside the command body, so that ``ckbd --help`` stays fast. Its library has the same name under
``ckbd.tools.<group>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import typer


def register_group(app: typer.Typer, group: typer.Typer, name: str, package: str, members: Sequence[str]) -> None:
    """Add every member of ``package`` to ``group``, in order, and ``group`` to ``app`` as ``name``."""
    for module in members:
        importlib.import_module(f"{package}.{module}").register(group)
    app.add_typer(group, name=name)
