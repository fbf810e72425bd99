"""The one-call API (``ckbd.encode``/``decode``/``info``): light import, same bytes and pixels as the
CLI, one codec per process shared by threads, and ckbd's one-line errors (shipped model only)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import rgb_array
from crafted_streams import reseal, resized
from PIL import Image
from typer.testing import CliRunner

import ckbd
from ckbd import api
from ckbd.cli.main import app
from ckbd.errors import BitstreamError, CkbdError, ImageError, MemoryBudgetError, ModelError, ModelMismatchError
from ckbd.runtime.codec import Encoder

DATA = Path(__file__).parent / "data"
PNG = DATA / "kodim15_odd.png"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def stream() -> bytes:
    return ckbd.encode(PNG)


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=DATA)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_ckbd_loads_nothing_heavy() -> None:
    """``import ckbd`` and looking up the API load neither numpy nor Pillow nor ONNX Runtime nor torch."""
    out = _python("import sys, json, ckbd; ckbd.encode, ckbd.decode, ckbd.info; "
                  "print(json.dumps([m for m in ('numpy', 'PIL', 'onnxruntime', 'torch') if m in sys.modules]))")
    assert json.loads(out) == []


def test_one_liner_works_without_torch() -> None:
    """The issue's example, with torch made unimportable as in a plain install."""
    out = _python("import sys; sys.modules['torch'] = None; import ckbd; d = ckbd.encode('kodim15_odd.png'); "
                  "print(ckbd.decode(d).shape, 'onnxruntime' in sys.modules)")
    assert out.split() == ["(67,", "131,", "3)", "True"]


def test_dir_and_unknown_attribute() -> None:
    assert {"encode", "decode", "info"} <= set(dir(ckbd))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ckbd.nope  # noqa: B018


def test_every_image_input_gives_the_cli_bytes(tmp_path: Path, stream: bytes) -> None:
    result = runner.invoke(app, ["encode", str(PNG), "-o", str(tmp_path / "cli.ckbd")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.ckbd").read_bytes() == stream
    pixels = np.asarray(Image.open(PNG).convert("RGB"))
    with open(PNG, "rb") as fh:
        from_file = ckbd.encode(fh)
    assert {ckbd.encode(str(PNG)), ckbd.encode(pixels), ckbd.encode(Image.open(PNG)), from_file} == {stream}
    assert ckbd.encode(np.asfortranarray(pixels)) == stream  # any memory layout


def test_decode_equals_the_cli(tmp_path: Path, stream: bytes) -> None:
    path = tmp_path / "a.ckbd"
    path.write_bytes(stream)
    result = runner.invoke(app, ["decode", str(path), "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    expected = np.asarray(Image.open(tmp_path / "a.png"))
    for source in (stream, bytearray(stream), memoryview(stream), path, str(path), io.BytesIO(stream)):
        decoded = ckbd.decode(source)
        assert decoded.dtype == np.uint8 and decoded.shape == (67, 131, 3)
        assert np.array_equal(decoded, expected)


def test_info_reads_the_header_as_the_cli_does(tmp_path: Path, stream: bytes) -> None:
    path = tmp_path / "a.ckbd"
    path.write_bytes(stream)
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for source in (stream, path, str(path), io.BytesIO(stream)):
        got = ckbd.info(source)
        assert (got.width, got.height, got.size) == (summary["width"], summary["height"], summary["bytes"]) == (
            131, 67, len(stream))
        assert got.bpp == pytest.approx(summary["bpp"], abs=1e-4)
        assert (got.header.arch, got.header.fingerprint_hex) == (summary["model"]["arch"],
                                                                 summary["model"]["fingerprint"])
    with pytest.raises(BitstreamError, match="truncated"):
        ckbd.info(stream[:-1])


def test_other_modes_are_converted_as_the_cli_does() -> None:
    gray = Image.fromarray(rgb_array(40, 56)[..., 0])
    rgba = Image.fromarray(np.dstack([rgb_array(40, 56), np.full((40, 56), 128, np.uint8)]))
    assert ckbd.decode(ckbd.encode(gray)).shape == (40, 56, 3)
    assert ckbd.encode(rgba) == ckbd.encode(rgba.convert("RGB"))


def test_codec_is_opened_once_and_shared_by_threads(monkeypatch: pytest.MonkeyPatch, stream: bytes) -> None:
    api.close_all()
    opened = []
    real_open = Encoder.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type, *args: object, **kwargs: object) -> object:
        opened.append(cls)
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(Encoder, "open", classmethod(counting_open))
    images = [rgb_array(48 + 8 * k, 64, seed=k) for k in range(4)]
    expected = [ckbd.encode(image) for image in images]
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = ckbd.encode(images[k])
                assert results[k] == expected[k]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [results[k] for k in range(4)] == expected
    assert opened == [Encoder]  # one open for 16 encodes in 5 threads
    api.close_all()
    assert ckbd.encode(images[0]) == expected[0]  # opened anew after close_all
    assert opened == [Encoder, Encoder]


def _encode_png() -> bytes:
    return ckbd.encode(PNG)


def test_forked_child_opens_its_own_codec(stream: bytes) -> None:
    """A DataLoader worker forked while another thread is inside a call (its codec's lock held)
    must not wait for that lock forever: the child opens its own codec."""
    import multiprocessing

    shared = api._shared(api._Config.of(Encoder, None, "onnxruntime", 0, "fp32", None))
    with shared.lock, multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_encode_png).get(timeout=120) == stream


def test_different_options_get_their_own_codec(stream: bytes) -> None:
    api.close_all()
    ckbd.decode(stream)
    ckbd.decode(stream, threads=1)
    ckbd.decode(stream, threads=1)
    assert len(api._codecs) == 2


@pytest.mark.parametrize(("bad", "error", "message"), [
    (np.zeros((8, 8, 3), np.float32), ImageError, "uint8 H x W x 3"),
    (np.zeros((8, 8), np.uint8), ImageError, "uint8 H x W x 3"),
    ([[1, 2, 3]], ImageError, "cannot encode a list"),
    ("no-such-image.png", ImageError, "no such file"),
])
def test_encode_errors(bad: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        ckbd.encode(bad)  # type: ignore[arg-type]
    assert info.value.__suppress_context__ or info.value.__cause__ is None


def test_not_an_image_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="not an image"):
        ckbd.encode(tmp_path / "x.png")


def test_decode_errors(tmp_path: Path, stream: bytes) -> None:
    cases = [
        (b"", BitstreamError, "empty"),
        (b"GIF89a" + stream, BitstreamError, "not a ckbd file"),
        (stream[:40], BitstreamError, "truncated"),
        (stream[:-5], BitstreamError, "truncated"),
        (stream + b"x", BitstreamError, "trailing garbage"),
        (reseal(stream, fp=b"12345678"), ModelMismatchError, "decode with the model it was made with"),
        (resized(stream, 70000, 70000), BitstreamError, "exceeds the limit"),
    ]
    for data, error, message in cases:
        with pytest.raises(error, match=message):
            ckbd.decode(data)
    with pytest.raises(CkbdError, match="cannot read"):
        ckbd.decode(tmp_path / "missing.ckbd")
    with pytest.raises(CkbdError, match="cannot decode a int"):
        ckbd.decode(5)  # type: ignore[arg-type]


def test_memory_budget_refuses_before_allocating(stream: bytes) -> None:
    """A 63-byte header announcing 8192x8192: refused by the budget, not by an out-of-memory kill."""
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        ckbd.decode(resized(stream, 8192, 8192), max_memory="64M")
    big = Image.new("RGB", (1024, 1024))  # any size: the budget is below what the process holds
    with pytest.raises(MemoryBudgetError):
        ckbd.encode(big, max_memory="64M")


def test_bad_model_and_backend(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        ckbd.encode(PNG, model=tmp_path)
    with pytest.raises(CkbdError, match="unknown backend 'nope'"):
        ckbd.encode(PNG, backend="nope")
    assert ckbd.encode(PNG, model=Path(api.__file__).parent / "assets" / "default") == ckbd.encode(PNG)
