"""Every command that needs an optional package says which extra to install, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK = "import sys\nfor name in sys.argv[1].split(','):\n    sys.modules[name] = None\n" \
        "from ckbd.cli.main import run\nrun(sys.argv[2:])\n"


def _run_without(packages: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCK, packages, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(("blocked", "args", "extra"), [
    ("torch", ["export", "--default", "-o", "model"], "export"),
    ("torch", ["train", "--data", ".", "-o", "c.pt", "--steps", "1"], "export"),
    ("torch", ["encode", "x.png", "-o", "x.ckbd", "--backend", "torch", "--model", "c.pt"], "export"),
    ("onnx", ["calibrate", "model", "--images", "."], "calibration"),
])
def test_missing_package_names_the_extra(tmp_path: Path, blocked: str, args: list[str], extra: str) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    (tmp_path / "c.pt").write_bytes(b"")
    (tmp_path / "model").mkdir()
    result = _run_without(blocked, *args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and f"[{extra}]" in lines[0], result.stderr
