"""Import direction: the CLI (ckbd.cli) may use the tools (ckbd.tools), never the other way round.

A tool that imports the CLI drags typer and every command into a benchmark script, and makes the
two packages a cycle. The check reads the sources (imports inside functions included), so it needs
nothing installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"

#: Tools that still import ckbd.cli, to be fixed; empty: the layering holds everywhere.
KNOWN_CLI_IMPORTS: set[str] = set()


def cli_imports(path: Path) -> list[str]:
    """``module:line`` of every import of ckbd.cli in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        cli = [name for name in names if name == "ckbd.cli" or name.startswith("ckbd.cli.")]
        if cli:
            found.append(f"{cli[0]}:{node.lineno}")
    return found


def tool_sources() -> list[Path]:
    return sorted(TOOLS.glob("*.py")) + sorted((TOOLS / "bench").glob("*.py"))


def test_tools_do_not_import_the_cli() -> None:
    offenders = {}
    for path in tool_sources():
        name = path.relative_to(ROOT).as_posix()
        if name not in KNOWN_CLI_IMPORTS and (found := cli_imports(path)):
            offenders[name] = found
    assert not offenders, f"ckbd.tools must not import ckbd.cli: {offenders}"


def test_known_offenders_are_still_offending() -> None:
    """The allow-list only shrinks: a fixed file must leave it, so that it cannot regress unseen."""
    fixed = sorted(name for name in KNOWN_CLI_IMPORTS if not (ROOT / name).is_file() or not cli_imports(ROOT / name))
    assert not fixed, f"no longer import ckbd.cli, remove from KNOWN_CLI_IMPORTS: {fixed}"


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "tool.py"
    source.write_text("import os\n\ndef f():\n    from ckbd.cli.options import check_writable\n"
                      "    import ckbd.cli.batch\n    from ckbd import cli\n")
    assert cli_imports(source) == ["ckbd.cli.options:4", "ckbd.cli.batch:5", "ckbd.cli:6"]
