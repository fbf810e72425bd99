"""mypy over the TensorRT engine code against tensorrt-stubs (the only check TensorRT code gets here)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install 'ckbd[dev]')")
@pytest.mark.skipif(not _installed("tensorrt-stubs"), reason="tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs)")
def test_engines_typecheck_against_tensorrt_stubs() -> None:
    result = subprocess.run(["bash", str(ROOT / "tools" / "typecheck.sh")], capture_output=True, text=True,
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
