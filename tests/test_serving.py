"""Serving with Triton: the real server (nvidia-pytriton's bundled tritonserver) on free loopback ports.

Skipped only when the ``serve`` extra is missing. Every server is stopped by its fixture or test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")
if find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton (the bundled tritonserver) is not installed", allow_module_level=True)

from conftest import rgb_array

from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.package import default_model_dir
from ckbd.serving.client import ServerError, TritonDecoder, TritonEncoder
from ckbd.serving.repository import RepoOptions, write_repository
from ckbd.serving.server import TritonServer, shm_segments

#: Small limits so that an oversized request is cheap to make.
MAX_BYTES = 4096
MAX_PIXELS = 128 * 128


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the shipped model, so the server and the references use the same files."""
    path = tmp_path_factory.mktemp("model") / "default"
    shutil.copytree(default_model_dir(), path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> dict[str, object]:
    image = rgb_array(96, 128, seed=3)
    data = Encoder.open(model_dir, threads=1).encode(image)
    return {"image": image, "data": data, "decoded": Decoder.open(model_dir, threads=1).decode(data),
            "model_dir": model_dir}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path):
    root = tmp_path_factory.mktemp("triton")
    write_repository(root / "repo", model_dir,
                     RepoOptions(instances=1, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS))
    with TritonServer(root / "repo", log_path=root / "server.log") as running:
        yield running


def urls(server: TritonServer) -> list[str]:
    return [server.http_url, server.grpc_url]


def test_decode_and_encode_are_bit_identical_over_http_and_grpc(server, reference):
    for url in urls(server):
        decoder, encoder = TritonDecoder(url), TritonEncoder(url)
        try:
            assert np.array_equal(decoder.decode(reference["data"]), reference["decoded"]), url
            assert encoder.encode(reference["image"]) == reference["data"], url
            images = decoder.decode_many([reference["data"]] * 3)  # concurrent requests
            assert all(np.array_equal(img, reference["decoded"]) for img in images)
        finally:
            decoder.close()
            encoder.close()


def test_bad_requests_get_their_own_error_and_the_next_request_succeeds(server, reference):
    data = reference["data"]
    oversized_stream = data + bytes(MAX_BYTES)
    oversized_image = rgb_array(160, 160, seed=1)
    for url in urls(server):
        decoder, encoder = TritonDecoder(url), TritonEncoder(url)
        try:
            results = decoder.decode_many([data[:-5], data, oversized_stream, data])
            assert isinstance(results[0], ServerError) and "truncated" in str(results[0])
            assert isinstance(results[2], ServerError) and f"limit of {MAX_BYTES} bytes" in str(results[2])
            assert all(np.array_equal(results[i], reference["decoded"]) for i in (1, 3))
            with pytest.raises(ServerError, match=f"limit of {MAX_PIXELS} pixels"):
                encoder.encode(oversized_image)
            assert "\n" not in str(results[0])
            assert encoder.encode(reference["image"]) == data
        finally:
            decoder.close()
            encoder.close()


def test_cli_decode_and_encode_with_server(server, reference, tmp_path):
    stream = tmp_path / "a.ckbd"
    stream.write_bytes(reference["data"])
    (tmp_path / "bad.ckbd").write_bytes(reference["data"][:40])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "CKBD_DEBUG": ""}

    def ckbd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    ok = ckbd("decode", str(stream), "-o", str(tmp_path / "a.png"), "--server", server.grpc_url)
    assert ok.returncode == 0, ok.stderr
    from ckbd.runtime.imageio import read_image

    assert np.array_equal(read_image(tmp_path / "a.png"), reference["decoded"])
    folder = ckbd("decode", str(stream), str(tmp_path / "bad.ckbd"), "-o", str(tmp_path / "out"),
                  "--server", server.http_url)
    assert folder.returncode == 1
    errors = [line for line in folder.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.ckbd" in errors[0] and "Traceback" not in folder.stderr
    assert (tmp_path / "out" / "a.png").is_file()

    from PIL import Image

    Image.fromarray(reference["image"]).save(tmp_path / "img.png")
    enc = ckbd("encode", str(tmp_path / "img.png"), "-o", str(tmp_path / "img.ckbd"), "--server", server.http_url)
    assert enc.returncode == 0, enc.stderr
    assert (tmp_path / "img.ckbd").read_bytes() == reference["data"]


def test_split_bls_path_matches_in_process_codec_and_shuts_down_cleanly(tmp_path, reference):
    """Stage models as Python stand-ins (one ORT session each), called by the BLS models."""
    write_repository(tmp_path / "repo", reference["model_dir"], RepoOptions(split=True, stage_backend="python"))
    running = TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log").start()
    prefix = running.shm_prefix
    try:
        assert shm_segments(prefix), "the Python backend should hold shared memory while serving"
        for url in urls(running):
            decoder, encoder = TritonDecoder(url), TritonEncoder(url)
            try:
                assert np.array_equal(decoder.decode(reference["data"]), reference["decoded"])
                assert encoder.encode(reference["image"]) == reference["data"]
                with pytest.raises(ServerError, match="truncated"):
                    decoder.decode(reference["data"][:-3])
            finally:
                decoder.close()
                encoder.close()
    finally:
        code = running.stop()
    assert code == 0, (tmp_path / "server.log").read_text()[-2000:]
    assert shm_segments(prefix) == []
    assert _processes_mentioning(prefix) == []


def test_serve_run_stops_cleanly_on_sigterm(server):
    """`ckbd serve run` on free ports, started from the checkout root (whose folders must not shadow the
    package in Triton's Python stubs); SIGTERM stops the server and its stubs, exit code 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "CKBD_DEBUG": ""}
    proc = subprocess.Popen([sys.executable, "-m", "ckbd", "serve", "run", str(server.repo), "--http-port", "0",
                             "--grpc-port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1])
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("serving ") for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.2)
        ready = [line for line in lines if line.startswith("serving ")]
        assert ready, "not ready in time"
        http_port = ready[0].split("HTTP 127.0.0.1:")[1].split(",")[0]
        prefix = f"ckbd{proc.pid}x{http_port}_"
        client = TritonDecoder(f"127.0.0.1:{http_port}")
        assert isinstance(client.decode_many([b"junk"])[0], ServerError)  # it answers
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, "".join(lines)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert shm_segments(prefix) == [] and _processes_mentioning(prefix) == []


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing ``text`` (the stubs carry the shm prefix)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found
