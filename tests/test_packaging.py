"""The installed package: every subpackage imports from a real (non-editable) install, and the
production runtime imports without torch or any CLI/plotting dependency."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("ckbd", "ckbd.cli", "ckbd.cli.bench", "ckbd.cli.check", "ckbd.models", "ckbd.export", "ckbd.runtime",
               "ckbd.engines", "ckbd.calibration", "ckbd.tools", "ckbd.tools.bench", "ckbd.tools.bench.codecs",
               "ckbd.tools.bench.memory", "ckbd.tools.check", "ckbd.tools.report", "ckbd.serving")
RUNTIME_MODULES = ("atomic", "backend", "bitstream", "codec", "coder", "entropy_tables", "grouping", "imageio",
                   "known_answers", "manifest", "model", "ort_backend", "package", "profiling", "rate", "self_check",
                   "stages")


def _blocking(names: tuple[str, ...]) -> str:
    return textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {names!r}:
                    raise ImportError(f"{{name}} is blocked by the test")
        sys.meta_path.insert(0, Block())
    """)


@pytest.mark.slow
def test_regular_install_imports_every_subpackage(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, timeout=600, cwd=tmp_path)
    assert not (target / "runtime").exists() and not (target / "export").exists(), "generic top-level names installed"
    assert (target / "ckbd" / "assets" / "default" / "manifest.json").is_file(), "default model not installed"
    assert (target / "ckbd" / "assets" / "default_checkpoint.pt").is_file()
    code = "import importlib, sys\n" + "".join(f"m = importlib.import_module({p!r}); assert {str(target)!r} in m.__file__, m.__file__\n" for p in SUBPACKAGES)
    if shutil.which("cc"):  # the optional C helper is built wherever a compiler exists
        code += "from ckbd.runtime import grouping; assert grouping.compiled is not None\n"
    # Run from tmp_path with only the install on the path, so the checkout cannot be imported.
    env = {"PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n" + code],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    # The README's Python snippet, started from the checkout root (on sys.path as ''): the root holds no
    # partial ckbd package that would shadow the installed one.
    snippet = readme_python_snippet() + f"\nimport ckbd\nassert ckbd.__file__.startswith({str(target)!r}), ckbd.__file__\n"
    snippet += "from PIL import Image\nassert pixels.shape == (*Image.open('tests/data/kodim23_crop.png').size[::-1], 3)\n"
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr


def readme_python_snippet() -> str:
    """The first Python block of the README's "Python" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Python"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_checkout_root_cannot_shadow_the_package() -> None:
    """Nothing importable as ``ckbd`` at the root: the package's own modules live under src/."""
    assert not (ROOT / "ckbd").exists() and not (ROOT / "ckbd.py").exists()
    assert (ROOT / "src" / "ckbd" / "__init__.py").is_file()
    assert "import ckbd" in readme_python_snippet()


def test_runtime_imports_with_its_four_dependencies_only() -> None:
    blocked = ("torch", "onnx", "typer", "tqdm", "matplotlib", "tensorrt", "pycuda", "cuda")
    imports = "".join(f"import ckbd.runtime.{m}\n" for m in RUNTIME_MODULES)
    result = subprocess.run([sys.executable, "-c", _blocking(blocked) + imports], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_optional_backends_import_lazily() -> None:
    code = _blocking(("tensorrt", "pycuda", "cuda")) + textwrap.dedent("""
        from ckbd.errors import MissingDependencyError
        from ckbd.runtime.backend import create_backend
        try:
            create_backend("tensorrt")
        except MissingDependencyError as exc:
            assert "'.[gpu]'" in str(exc), exc
        else:
            raise SystemExit("tensorrt backend created without tensorrt")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_cli_help_needs_no_heavy_dependency() -> None:
    code = _blocking(("torch", "onnx", "onnxruntime", "matplotlib", "tensorrt")) + textwrap.dedent("""
        from ckbd.cli.main import run
        try:
            run(["--help"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "encode" in result.stdout and "decode" in result.stdout
