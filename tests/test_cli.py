"""The command line as a user runs it: help, and how errors reach the terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_ckbd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m ckbd ARGS`` in a fresh interpreter, as the console script would run."""
    full_env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def test_module_help():
    result = run_ckbd("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "train" in result.stdout


def test_no_arguments_shows_help():
    result = run_ckbd()
    assert "Usage" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("ckbd") is None and not (Path(sys.executable).parent / "ckbd").exists(),
                    reason="console script not installed")
def test_console_script_help():
    script = shutil.which("ckbd") or str(Path(sys.executable).parent / "ckbd")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_train_help():
    result = run_ckbd("train", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--arch", "--lambda", "--crop", "--resume", "--out"):
        assert option in result.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = run_ckbd("train", "--data", str(tmp_path / "nonexistent"), "-o", str(tmp_path / "x.pt"), cwd=tmp_path)
    assert result.returncode == 2  # a folder named on the command line that does not exist: usage
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "nonexistent" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_bad_crop_is_a_user_error(tmp_path):
    result = run_ckbd("train", "--data", str(tmp_path), "--crop", "100", "-o", str(tmp_path / "x.pt"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "multiple of 64" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    """CKBD_DEBUG=1 (like --debug) re-raises ckbd's error so the traceback reaches the terminal."""
    result = run_ckbd("train", "--data", str(tmp_path / "nonexistent"), "-o", str(tmp_path / "x.pt"),
                      env={"CKBD_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ckbd.errors.UsageError" in result.stderr


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    result = run_ckbd("train", "--data", str(tmp_path / "nonexistent"), "-o", str(tmp_path / "x.pt"), "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ckbd.errors.UsageError" in result.stderr


def test_usage_error_exit_code():
    result = run_ckbd("train", "--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
