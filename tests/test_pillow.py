"""The Pillow plugin: lazy open (header only), load() equal to ``ckbd decode``, save round trips,
an ImageFolder-style dataset of .ckbd files, and Pillow's own exceptions for hostile files."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest
from crafted_streams import reseal, resized
from PIL import Image, UnidentifiedImageError
from typer.testing import CliRunner

import ckbd
import ckbd.pillow
from ckbd import api
from ckbd.cli.main import app
from ckbd.runtime import bitstream as bs
from ckbd.runtime.package import default_model_dir

DATA = Path(__file__).parent / "data"
PNGS = sorted(DATA.glob("kodim*.png"))
runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def streams() -> dict[str, bytes]:
    return {p.stem: ckbd.encode(p) for p in PNGS}


def test_registered() -> None:
    assert Image.registered_extensions()[".ckbd"] == "CKBD"
    assert "CKBD" in Image.OPEN and "CKBD" in Image.SAVE and Image.MIME["CKBD"] == "image/x-ckbd"


def test_open_reads_the_header_only(streams: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    data = streams["kodim15_odd"]
    damaged = data[:-40] + bytes(b ^ 0x5A for b in data[-40:])  # payloads wrecked, header intact
    fh = io.BytesIO(damaged)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("Image.open decoded")

    monkeypatch.setattr(api, "decode", no_decoding)
    with Image.open(fh) as img:
        assert (img.size, img.mode, img.format) == ((131, 67), "RGB", "CKBD")
        assert fh.tell() == bs.HEADER_SIZE
        assert img.info["model"] == "mbt2018-ckbd" and img.info["entropy_params"] == "integer"
        assert img.info["bpp"] == pytest.approx(8 * len(data) / (131 * 67))
        monkeypatch.undo()
        with pytest.raises(OSError, match="cannot decode"):
            img.load()


def test_load_equals_the_cli_decode(tmp_path: Path) -> None:
    for png in PNGS:
        encoded, decoded = tmp_path / f"{png.stem}.ckbd", tmp_path / f"{png.stem}.png"
        assert runner.invoke(app, ["encode", str(png), "-o", str(encoded)]).exit_code == 0
        assert runner.invoke(app, ["decode", str(encoded), "-o", str(decoded)]).exit_code == 0
        with Image.open(encoded) as img:
            img.load()
            assert img.fp is None  # the file Image.open opened is closed once decoded
            pixels = np.asarray(img)
        assert np.array_equal(pixels, np.asarray(Image.open(decoded)))


def test_save_round_trips(tmp_path: Path, streams: dict[str, bytes]) -> None:
    original = Image.open(PNGS[0])
    original.save(tmp_path / "a.ckbd")  # by extension
    assert (tmp_path / "a.ckbd").read_bytes() == streams[PNGS[0].stem] == ckbd.encode(original)
    buf = io.BytesIO()
    original.save(buf, format="CKBD", model=default_model_dir(), threads=1)
    assert buf.getvalue() == streams[PNGS[0].stem]
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert np.array_equal(np.asarray(img), ckbd.decode(buf.getvalue()))
        again = io.BytesIO()
        img.save(again, format="CKBD")  # a decoded image re-encodes without complaint
    assert len(again.getvalue()) > bs.HEADER_SIZE
    Image.open(PNGS[0]).convert("L").save(tmp_path / "gray.ckbd")
    assert Image.open(tmp_path / "gray.ckbd").convert("RGB").size == original.size


def test_save_errors_are_oserrors_and_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="as CKBD:.*manifest") as info:
        Image.open(PNGS[0]).save(tmp_path / "a.ckbd", model=tmp_path)
    assert info.value.__suppress_context__
    assert not (tmp_path / "a.ckbd").exists()


def _stand_in_image_folder(root: Path) -> list[tuple[Image.Image, int]]:
    """torchvision's ImageFolder in miniature: classes are the sorted subfolders, samples the files
    ``is_valid_file`` accepts, and the default loader opens each with Pillow and converts to RGB."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = [(path, i) for i, name in enumerate(classes) for path in sorted((root / name).rglob("*"))
               if path.suffix == ".ckbd"]

    def pil_loader(path: Path) -> Image.Image:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")

    return [(pil_loader(path), target) for path, target in samples]


def test_image_folder_of_ckbd_files(tmp_path: Path, streams: dict[str, bytes]) -> None:
    for i, (stem, data) in enumerate(sorted(streams.items())):
        folder = tmp_path / ("cats" if i % 2 else "dogs")
        folder.mkdir(exist_ok=True)
        (folder / f"{stem}.ckbd").write_bytes(data)
    dataset = _stand_in_image_folder(tmp_path)
    assert [target for _, target in dataset] == [0, 1, 1]  # cats first
    by_size = {img.size: np.asarray(img) for img, _ in dataset}
    for data in streams.values():
        pixels = ckbd.decode(data)
        assert np.array_equal(by_size[(pixels.shape[1], pixels.shape[0])], pixels)
    if importlib.util.find_spec("torchvision") is not None:
        from torchvision.datasets import ImageFolder

        real = ImageFolder(str(tmp_path), is_valid_file=lambda p: p.endswith(".ckbd"))
        assert [np.asarray(img).shape for img, _ in real] == [np.asarray(img).shape for img, _ in dataset]


@pytest.mark.parametrize(("case", "message"), [
    ("bad magic", None),
    ("header crc", "corrupt header: checksum mismatch"),
    ("truncated header", "truncated: the header needs"),
    ("future version", "format version 9 is not supported"),
    ("huge", "exceeds the limit"),
    ("inconsistent", "inconsistent header"),
])
def test_hostile_headers_are_unidentified(streams: dict[str, bytes], case: str, message: str | None) -> None:
    data = streams["kodim08_crop"]
    hostile = {
        "bad magic": b"CKBX" + data[4:],
        "header crc": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "truncated header": data[:30],
        "future version": reseal(data, version=9),
        "huge": resized(data, 70000, 70000),
        "inconsistent": reseal(data, y_h=99),
    }[case]
    with pytest.raises(UnidentifiedImageError) as info:
        Image.open(io.BytesIO(hostile))
    if message is not None:  # with the CKBD magic the file is ours, and the reason is ckbd's
        assert message in str(info.value) and "\n" not in str(info.value)
        assert info.value.__suppress_context__


@pytest.mark.parametrize(("case", "message"), [
    ("corrupt payload", "corrupt"),
    ("truncated payload", "truncated: expected"),
    ("trailing garbage", "trailing garbage"),
    ("other model", "decode with the model it was made with"),
    ("payload lengths", "payload bytes announced|truncated: expected"),  # a file: its size says first
])
def test_hostile_payloads_fail_on_load(streams: dict[str, bytes], tmp_path: Path, case: str, message: str) -> None:
    data = streams["kodim08_crop"]
    hostile = {
        "corrupt payload": data[:-30] + bytes(30),
        "truncated payload": data[:-7],
        "trailing garbage": data + b"more",
        "other model": reseal(data, fp=b"\x01" * 8),
        "payload lengths": reseal(data, a_len=2**31),
    }[case]
    for source in (io.BytesIO(hostile), tmp_path / "x.ckbd"):
        (tmp_path / "x.ckbd").write_bytes(hostile)
        with Image.open(source) as img:
            assert img.size == (128, 128)
            with pytest.raises(OSError, match=message) as info:
                img.convert("RGB")
        assert str(info.value).startswith("cannot decode") and "\n" not in str(info.value)
        assert info.value.__suppress_context__


def test_memory_budget_applies_before_pillow_allocates(streams: dict[str, bytes],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    header = resized(streams["kodim08_crop"], 8192, 8192)  # 63 bytes announcing 8192x8192
    allocations = []
    monkeypatch.setattr(Image.core, "new", lambda *args: allocations.append(args))
    ckbd.pillow.register(max_memory="64M")
    try:
        with Image.open(io.BytesIO(header)) as img:
            assert img.size == (8192, 8192)
            with pytest.raises(OSError, match="memory budget"):
                img.load()
    finally:
        ckbd.pillow.register()
    assert allocations == []


def test_register_refuses_unknown_options() -> None:
    with pytest.raises(TypeError, match="quality"):
        ckbd.pillow.register(quality=90)


def test_file_closed_when_open_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.ckbd"
    path.write_bytes(b"CKBD\x02" + bytes(10))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(UnidentifiedImageError, match="bad.ckbd"):
            Image.open(path)
    assert len(os.listdir("/proc/self/fd")) == before
