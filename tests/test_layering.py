"""Import directions between ckbd's parts, as one table.

Each part of the package may import only the parts its row allows. The check reads the sources
(imports inside functions included, since a lazy import is still a dependency), so it needs nothing
installed. The rows say why the layering matters: the production runtime must install and import
without torch or the CLI; the tools are driven by the CLI and must not drive it back; the exporter
must not need the calibration package (calibration builds on export).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folder of each part of the installed package.
PARTS: dict[str, Path] = {
    "cli": ROOT / "src/ckbd/cli",
    "models": ROOT / "src/ckbd/models",
    "serving": ROOT / "src/ckbd/serving",
    "export": ROOT / "export",
    "runtime": ROOT / "runtime",
    "engines": ROOT / "engines",
    "calibration": ROOT / "calibration",
    "tools": ROOT / "tools",
}
#: Modules directly in src/ckbd: the shared base (errors, progress, data paths, signals), the library
#: entry points (training and baselines, the one-call API, the Pillow plugin) and the CLI's launcher.
BASE = {"ckbd", "ckbd.errors", "ckbd.progress", "ckbd.data_paths", "ckbd.stop_signals"}
TOP_LEVEL_PARTS = {"ckbd.training": "training", "ckbd.baselines": "training", "ckbd.api": "api",
                   "ckbd.pillow": "api", "ckbd.__main__": "launcher"}
EVERYTHING = {"base", "runtime", "models", "export", "calibration", "engines", "serving", "training", "tools", "cli",
              "api", "launcher"}

#: part -> the parts it may import (``base`` is the shared base above).
ALLOWED: dict[str, set[str]] = {
    "runtime": {"base"},  # torch-free, and nothing above it
    "engines": {"base", "runtime"},
    "serving": {"base", "runtime", "engines"},
    "api": {"base", "runtime"},  # `import ckbd` and the Pillow plugin stay torch-free
    "models": {"base", "runtime"},
    "export": {"base", "runtime", "models"},  # never calibration: calibration builds on export
    "calibration": {"base", "runtime", "models", "export", "engines"},
    "training": {"base", "runtime", "models", "export"},
    "tools": EVERYTHING - {"cli", "api", "launcher"},  # the CLI drives the tools, never the reverse
    "cli": EVERYTHING - {"api", "launcher"},
    "launcher": {"base", "cli"},
}


def part_of(module: str) -> str | None:
    """The part a ``ckbd...`` module belongs to (None for anything outside ckbd)."""
    parts = module.split(".")
    if parts[0] != "ckbd":
        return None
    if module in BASE:
        return "base"
    if ".".join(parts[:2]) in TOP_LEVEL_PARTS:
        return TOP_LEVEL_PARTS[".".join(parts[:2])]
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else "base"


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every absolute ``ckbd`` module ``path`` imports, at any depth, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ckbd":  # `from ckbd import training` names a module, `__version__` does not
                found += [(f"ckbd.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name == "ckbd" or name.startswith("ckbd.")]


def sources() -> list[tuple[str, Path]]:
    """(part, file) for every module of the package."""
    found = [(part, path) for part, folder in PARTS.items() for path in sorted(folder.rglob("*.py"))]
    for path in sorted((ROOT / "src/ckbd").glob("*.py")):
        module = "ckbd" if path.stem == "__init__" else f"ckbd.{path.stem}"
        found.append((TOP_LEVEL_PARTS.get(module, "api" if module == "ckbd" else "base"), path))
    return found


def violations(files: list[tuple[str, Path]], root: Path = ROOT) -> dict[str, list[str]]:
    """``file -> [module:line (part -> target)]`` for every import the table does not allow."""
    wrong: dict[str, list[str]] = {}
    for part, path in files:
        allowed = ALLOWED.get(part, {"base"}) | {part}
        for module, line in imported_modules(path):
            target = part_of(module)
            if target is not None and target not in allowed:
                wrong.setdefault(path.relative_to(root).as_posix(), []).append(f"{module}:{line} ({part} -> {target})")
    return wrong


def test_every_import_follows_the_table() -> None:
    wrong = violations(sources())
    assert not wrong, f"imports against the layering table: {wrong}"


def test_every_part_has_a_row_and_a_folder() -> None:
    assert set(PARTS) - {"cli"} <= set(ALLOWED)
    assert all(folder.is_dir() for folder in PARTS.values())


@pytest.mark.parametrize(("source", "expected"), [
    ("import os\n\ndef f():\n    from ckbd.cli.options import check_writable\n", [("ckbd.cli.options", 4)]),
    ("from ckbd import training\nimport ckbd.tools.report\n", [("ckbd.training", 1), ("ckbd.tools.report", 2)]),
    ("from . import sibling\nfrom ckbd import __version__\n", [("ckbd.__version__", 2)]),
])
def test_the_scan_sees_every_absolute_import(tmp_path: Path, source: str, expected: list[tuple[str, int]]) -> None:
    path = tmp_path / "module.py"
    path.write_text(source)
    assert imported_modules(path) == expected


def test_a_forbidden_direction_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "runtime" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from ckbd.export.onnx_export import export_model\n    from ckbd.errors import CkbdError\n")
    assert violations([("runtime", bad)], tmp_path) == {"runtime/bad.py": ["ckbd.export.onnx_export:2 (runtime -> export)"]}
