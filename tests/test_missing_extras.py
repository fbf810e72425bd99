"""Every command that needs an optional package says which extra to install, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BLOCK = "import sys\nfor name in sys.argv[1].split(','):\n    sys.modules[name] = None\n" \
        "from ckbd.cli.main import run\nrun(sys.argv[2:])\n"


def _run_without(packages: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCK, packages, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


#: (packages made unimportable, command line, extra the message must name): every command whose work
#: needs an optional package, with that package missing.
CASES = [
    ("torch", ["export", "--default", "-o", "model"], "export"),
    ("torch", ["train", "--data", ".", "-o", "c.pt", "--steps", "1"], "export"),
    ("torch", ["encode", "x.png", "-o", "x.ckbd", "--backend", "torch", "--model", "c.pt"], "export"),
    ("torch", ["encode", "x.png", "-o", "y.ckbd", "--backend", "torch"], "export"),
    ("torch", ["decode", "s.ckbd", "-o", "s.png", "--backend", "torch"], "export"),
    ("torch", ["eval", "x.png", "--model", "c.pt"], "export"),
    ("torch", ["study", "masks", "c.pt", "--images", "."], "export"),
    ("torch", ["bench", "codecs", "--images", ".", "--count", "1"], "export"),
    ("onnx", ["calibrate", "model", "--images", "."], "calibration"),
    ("onnx", ["bench", "ops", "--model", "shipped", "--image", "x.png"], "calibration"),
    ("torch", ["ship", "c.pt", "--calibration-images", "."], "export"),
    ("matplotlib", ["eval", "x.png", "--plot", "rd.png"], "plots"),
    ("matplotlib", ["profile", "x.png", "--plot", "plots.png"], "plots"),
    ("tensorrt", ["build", "shipped"], "gpu"),
    ("pytriton", ["serve", "run", "repo"], "serve"),
    ("tritonclient", ["encode", "x.png", "-o", "z.ckbd", "--server", "127.0.0.1:1"], "serve"),
    ("ray", ["encode", "x.png", "-o", "out", "--engine", "ray"], "batch"),
]


@pytest.mark.parametrize(("blocked", "args", "extra"), CASES, ids=[" ".join(c[1][:2]) + f" -{c[0]}" for c in CASES])
def test_missing_package_names_the_extra(tmp_path: Path, blocked: str, args: list[str], extra: str) -> None:
    from PIL import Image

    from ckbd.cli.main import main
    from ckbd.runtime.codec import Encoder
    from ckbd.runtime.package import default_model_dir

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    (tmp_path / "s.ckbd").write_bytes(Encoder.open().encode(np.zeros((64, 64, 3), np.uint8)))
    (tmp_path / "c.pt").write_bytes(b"")
    (tmp_path / "model").mkdir()
    shutil.copytree(default_model_dir(), tmp_path / "shipped")
    if blocked == "pytriton":
        assert main(["serve", "repo", "-o", str(tmp_path / "repo")]) == 0  # needs no extra to write
    result = _run_without(blocked, *args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and f"[{extra}]" in lines[0], result.stderr
    assert result.returncode == 1, result.stderr
