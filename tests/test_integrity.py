"""Model files are checked against the manifest's sha256 on open; damage is a one-line error naming the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import ckbd.runtime.integrity as integrity
from ckbd.errors import ModelError
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.package import default_model_dir


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(default_model_dir(), target)
    return target


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_model_opens(model_dir: Path) -> None:
    Decoder.open(model_dir, threads=1)


def test_one_flipped_bit_in_a_graph_is_refused(model_dir: Path) -> None:
    graph = model_dir / "latent_synthesis.onnx"
    _flip_bit(graph, graph.stat().st_size // 2)  # inside the weights: ONNX Runtime would load it
    with pytest.raises(ModelError, match="latent_synthesis.onnx does not match its sha256") as info:
        Decoder.open(model_dir, threads=1)
    assert "\n" not in str(info.value)


def test_a_graph_from_elsewhere_is_refused_not_blamed_on_the_bitstream(model_dir: Path) -> None:
    shutil.copyfile(model_dir / "nonanchor_params.onnx", model_dir / "anchor_params.onnx")
    with pytest.raises(ModelError, match="anchor_params.onnx"):
        Encoder.open(model_dir, threads=1)


@pytest.mark.parametrize("name", ["y_tables.npz", "z_tables.npz"])
def test_damaged_tables_are_refused(model_dir: Path, name: str) -> None:
    assert name in Manifest.load(model_dir).tables_sha256
    _flip_bit(model_dir / name, (model_dir / name).stat().st_size - 30)
    with pytest.raises(ModelError, match=name):
        Decoder.open(model_dir, threads=1)


def test_missing_graph_is_named(model_dir: Path) -> None:
    (model_dir / "hyper_synthesis.onnx").unlink()
    with pytest.raises(ModelError, match="hyper_synthesis.onnx is missing"):
        Decoder.open(model_dir, threads=1)


def test_verified_files_are_cached_and_a_change_is_still_seen(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = integrity.file_sha256

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(integrity, "file_sha256", counting)
    entry = Manifest.load(model_dir).graphs["latent_synthesis"]
    graph = model_dir / entry.file
    integrity.verify_file(graph, entry.sha256)
    integrity.verify_file(graph, entry.sha256)
    assert calls == [graph]  # the second check came from the cache
    stat = graph.stat()
    _flip_bit(graph, stat.st_size // 2)
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only ctime moved
    with pytest.raises(ModelError, match="does not match"):
        integrity.verify_file(graph, entry.sha256)
    assert len(calls) == 2


def test_unwritable_cache_only_costs_time(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("CKBD_CACHE_DIR", str(blocker / "sub"))
    entry = Manifest.load(model_dir).graphs["analysis"]
    integrity.verify_file(model_dir / entry.file, entry.sha256)


def test_export_records_the_tables_hashes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from conftest import tiny_model

    from ckbd.export.model_package import build_package, save_tables
    from ckbd.runtime.manifest import file_sha256

    manifest, y_tables, z_tables = build_package(tiny_model())
    save_tables(tmp_path, manifest, y_tables, z_tables)
    assert manifest.tables_sha256 == {name: file_sha256(tmp_path / name) for name in (manifest.y_tables,
                                                                                      manifest.z_tables)}
