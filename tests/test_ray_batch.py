"""``--engine ray``: a Ray Data job on a loopback-only local cluster gives the local run's outputs and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.data")

from conftest import rgb_array
from PIL import Image


def run_ckbd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "CKBD_DEBUG": "",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_ray_encode_matches_local_run_byte_for_byte(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(64, 64), (80, 96), (64, 128), (50, 70)]):
        Image.fromarray(rgb_array(h, w, seed=i)).save(images / f"img{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    model = ["--threads", "1"]
    local = run_ckbd("encode", str(images), "-o", str(tmp_path / "local"), *model)
    ray = run_ckbd("encode", str(images), "-o", str(tmp_path / "ray"), *model, "--engine", "ray")
    assert local.returncode == ray.returncode == 1, ray.stderr[-3000:]

    def error_lines(result: subprocess.CompletedProcess) -> list[str]:
        return [line for line in result.stderr.splitlines() if line.startswith("error:")]

    assert error_lines(ray) == error_lines(local) and len(error_lines(ray)) == 1
    assert "broken.png" in error_lines(ray)[0]
    outputs = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert outputs == [f"img{i}.ckbd" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == outputs
    for name in outputs:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert ray.stdout.replace("/ray/", "/local/") == local.stdout
