"""``docs/cli.md``: every command and option of ``ckbd``, generated from the command line itself.

A hand-written command summary goes stale as soon as an option is added; this page cannot, because a
test compares it with :func:`render_reference` and fails when they differ. Regenerate it with::

    python -m ckbd.cli.reference > docs/cli.md
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import typer

HEADER = """# Command reference

Generated from the command line by `python -m ckbd.cli.reference > docs/cli.md`; a test fails when
this page and the commands disagree. `ckbd COMMAND --help` shows the same text in the terminal.
"""


# typer builds click-style command objects (its own vendored click in recent versions), so they are read
# by their documented attributes rather than checked against click's classes.
Command = Any


def _commands(group: Command, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Command]]:
    """Every leaf command under ``group`` with its name path, in the order ``--help`` lists them."""
    found: list[tuple[tuple[str, ...], Command]] = []
    context = group.make_context(" ".join(path), [], resilient_parsing=True)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        if hasattr(command, "list_commands"):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def _cell(text: str | None) -> str:
    """Help text as one table cell: one line, pipes escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")


def _parameter(param: Any) -> str:
    if param.param_type_name == "argument":
        many = "..." if param.nargs == -1 or param.multiple else ""
        help_text = _cell(getattr(param, "help", None))
        return f"| `{(param.name or '').upper()}{many}` | {'' if param.required else '(optional) '}{help_text} |"
    names = ", ".join(f"`{name}`" for name in (*param.opts, *param.secondary_opts))
    default = "" if param.is_flag or param.default in (None, (), []) else f" (default: `{param.default}`)"
    return f"| {names} | {_cell(param.help)}{default} |"


def _section(path: tuple[str, ...], command: Command) -> str:
    lines = [f"## `{' '.join(path)}`", ""]
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        if paragraph.strip():
            lines += [" ".join(paragraph.split()), ""]
    params = [p for p in command.params if "--help" not in p.opts]
    if params:
        lines += ["| parameter | meaning |", "|---|---|", *(_parameter(p) for p in params), ""]
    return "\n".join(lines)


def render_reference(app: typer.Typer | None = None) -> str:
    """The whole page: one section per command, in ``--help`` order."""
    if app is None:
        from ckbd.cli.main import app as main_app

        app = main_app
    root = typer.main.get_command(app)
    commands = _commands(root, ("ckbd",))
    index = [f"- [`{' '.join(path)}`](#{'-'.join(path)})" for path, _ in commands]
    return "\n".join([HEADER, *index, "", *(_section(path, command) for path, command in commands)])


if __name__ == "__main__":
    sys.stdout.write(render_reference())
