"""The Triton model repository ``ckbd serve repo`` writes, and client URL parsing (no server needed)."""

from __future__ import annotations

import shutil

import pytest

from ckbd.errors import CkbdError
from ckbd.runtime.package import default_model_dir
from ckbd.runtime.stages import ALL_STAGES
from ckbd.serving.client import parse_url
from ckbd.serving.repository import RepoOptions, write_repository


def test_whole_layout_has_two_python_models_with_limits(tmp_path):
    names = write_repository(tmp_path / "repo", options=RepoOptions(instances=3, max_batch=8, max_bytes=1000))
    assert names == ["ckbd_decode", "ckbd_encode"]
    config = (tmp_path / "repo" / "ckbd_decode" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "count: 3 kind: KIND_CPU" in config
    assert "max_batch_size: 8" in config and 'key: "max_bytes" value: { string_value: "1000" }' in config
    assert 'name: "bitstream" data_type: TYPE_STRING' in config
    model = tmp_path / "repo" / "ckbd_decode" / "ckbd_model"
    assert (model / "manifest.json").is_file() and (model / "latent_synthesis.onnx").is_file()
    assert "DecodeModel" in (tmp_path / "repo" / "ckbd_decode" / "1" / "model.py").read_text()


def test_split_layout_uses_onnxruntime_models_on_gpu_by_default(tmp_path):
    write_repository(tmp_path / "repo", options=RepoOptions(split=True, instances=2))
    for stage in ALL_STAGES:
        folder = tmp_path / "repo" / f"ckbd_{stage}"
        config = (folder / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in config and "count: 2 kind: KIND_GPU" in config
        assert "max_batch_size: 0" in config
        assert (folder / "1" / "model.onnx").is_file()
    hyper = (tmp_path / "repo" / "ckbd_hyper_synthesis" / "config.pbtxt").read_text()
    assert 'name: "z_symbols" data_type: TYPE_INT32 dims: [ 1, 64, -1, -1 ]' in hyper
    bls = tmp_path / "repo" / "ckbd_decode"
    assert "SplitDecodeModel" in (bls / "1" / "model.py").read_text()
    assert not list((bls / "ckbd_model").glob("*.onnx"))  # the BLS model needs only the tables


def test_split_layout_prefers_tensorrt_engines_when_present(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    (model / "engines").mkdir()
    for stage in ALL_STAGES:
        (model / "engines" / f"{stage}.fp32.engine").write_bytes(b"plan " + stage.encode())
    write_repository(tmp_path / "repo", model, RepoOptions(split=True))
    folder = tmp_path / "repo" / "ckbd_analysis"
    assert 'platform: "tensorrt_plan"' in (folder / "config.pbtxt").read_text()
    assert (folder / "1" / "model.plan").read_bytes() == b"plan analysis"


def test_repository_refuses_bad_requests(tmp_path):
    with pytest.raises(CkbdError, match="no fp32 engines"):
        write_repository(tmp_path / "a", options=RepoOptions(split=True, stage_backend="tensorrt"))
    with pytest.raises(CkbdError, match="instances"):
        write_repository(tmp_path / "b", options=RepoOptions(instances=0))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(CkbdError, match="not empty"):
        write_repository(tmp_path / "c")


@pytest.mark.parametrize("url, expected", [
    ("127.0.0.1:8000", ("http", "127.0.0.1:8000")),
    ("http://localhost:8000/", ("http", "localhost:8000")),
    ("grpc://127.0.0.1:8001", ("grpc", "127.0.0.1:8001")),
])
def test_parse_url(url: str, expected: tuple[str, str]):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1", "ftp://host:1", "grpc://:80"])
def test_parse_url_rejects(url: str):
    with pytest.raises(CkbdError):
        parse_url(url)


_BLOCKED_RUN = ("import sys\nfor name in sys.argv[1].split(','):\n    sys.modules[name] = None\n"
                "from ckbd.cli.main import run\nrun(sys.argv[2:])\n")


@pytest.mark.parametrize(("blocked", "args", "extra"), [
    ("tritonclient", ["decode", "x.ckbd", "--server", "127.0.0.1:1"], "serve"),
    ("pytriton", ["serve", "run", "repo", "--http-port", "0", "--grpc-port", "0"], "serve"),
    ("ray", ["encode", "x.png", "y.png", "-o", "out", "--engine", "ray"], "batch"),
])
def test_missing_serving_packages_name_the_extra(tmp_path, blocked: str, args: list[str], extra: str):
    import os
    import subprocess
    import sys

    from PIL import Image

    for name in ("x.png", "y.png"):
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    (tmp_path / "x.ckbd").write_bytes(b"CKBD")
    write_repository(tmp_path / "repo")
    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "TRITONSERVER": ""}
    result = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, blocked, *args], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and f"[{extra}]" in lines[0], result.stderr
