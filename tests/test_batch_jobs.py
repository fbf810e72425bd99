"""``--jobs`` (files in parallel) and ``--max-memory`` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import rgb_array
from PIL import Image
from test_cli import run_ckbd


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate(((128, 192), (96, 160), (130, 70), (64, 64))):
        Image.fromarray(rgb_array(h, w, seed=i)).save(folder / f"img{i}.png")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_jobs_give_byte_identical_outputs(images, tmp_path):
    """Encoding and decoding with two workers writes exactly the files the sequential run writes."""
    for args in ((), ("--jobs", "2")):
        tag = "par" if args else "seq"
        enc = run_ckbd("encode", str(images), "-o", str(tmp_path / f"{tag}_enc"), "--threads", "2", *args)
        assert enc.returncode == 0, enc.stderr
        dec = run_ckbd("decode", str(tmp_path / f"{tag}_enc"), "-o", str(tmp_path / f"{tag}_dec"), "--threads", "2",
                       *args)
        assert dec.returncode == 0, dec.stderr
    assert _files(tmp_path / "par_enc") == _files(tmp_path / "seq_enc")
    assert _files(tmp_path / "par_dec") == _files(tmp_path / "seq_dec")
    assert len(_files(tmp_path / "par_dec")) == 4


def test_jobs_report_a_failing_file_and_finish_the_others(images, tmp_path):
    streams = tmp_path / "streams"
    assert run_ckbd("encode", str(images), "-o", str(streams)).returncode == 0
    (streams / "img1.ckbd").write_bytes(b"not a ckbd file at all")
    result = run_ckbd("decode", str(streams), "-o", str(tmp_path / "out"), "--jobs", "3")
    assert result.returncode == 1
    assert "img1.ckbd" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img2.png", "img3.png"]


def test_max_memory_too_small_is_a_one_line_refusal(images, tmp_path):
    result = run_ckbd("encode", str(images / "img0.png"), "-o", str(tmp_path / "a.ckbd"), "--max-memory", "1M")
    assert result.returncode == 1
    assert "memory budget of 1 MB" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a.ckbd").exists()


def test_max_memory_must_be_a_size(images, tmp_path):
    result = run_ckbd("encode", str(images / "img0.png"), "-o", str(tmp_path / "a.ckbd"), "--max-memory", "lots")
    assert result.returncode == 2
    assert "'lots'" in result.stderr and "Traceback" not in result.stderr


def test_jobs_are_for_local_runs(images, tmp_path):
    result = run_ckbd("encode", str(images), "-o", str(tmp_path / "out"), "--jobs", "2", "--server", "127.0.0.1:9")
    assert result.returncode == 2 and "--jobs" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
