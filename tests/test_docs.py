"""The documentation that can go stale: docs/cli.md against the command line, the README's size and links."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ckbd.cli.reference import render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == render_reference(), "docs/cli.md is stale: python -m ckbd.cli.reference > docs/cli.md"


def test_cli_reference_lists_every_command_and_option() -> None:
    page = render_reference()
    for command in ("ckbd encode", "ckbd decode", "ckbd bench coder", "ckbd bench memory run", "ckbd check gpu"):
        assert f"## `{command}`" in page
    assert "`--max-memory`" in page and "`--force`, `-f`" in page


def test_the_reference_of_a_small_app() -> None:
    app = typer.Typer()
    group = typer.Typer(help="A group.")

    @app.command("one")
    def one(path: Path = typer.Argument(..., help="A file."),
            size: int = typer.Option(3, "--size", help="How big | how many.")) -> None:
        """First command.

        Second paragraph."""

    @group.command("two")
    def two() -> None:
        """Second command."""

    app.add_typer(group, name="group")
    page = render_reference(app)
    assert "- [`ckbd one`](#ckbd-one)" in page and "## `ckbd group two`" in page
    assert "First command.\n\nSecond paragraph." in page
    assert "| `PATH` | A file. |" in page and "| `--size` | How big \\| how many. (default: `3`) |" in page


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
