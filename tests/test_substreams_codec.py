"""Substreams through the codec and the CLI, with the shipped model.

tests/legacy_streams/v2_*.ckbd were written by ckbd before substreams existed (one stream per pass), with
the images they decoded to beside them (v2_*.decoded.png): they must decode to the same pixels and
re-encode to the same bytes. A larger image is split into substreams, and every thread count and
both coder implementations must give the same file and the same image.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image

from ckbd.cli.main import main
from ckbd.runtime import bitstream as bs
from ckbd.runtime import rangecoder, substreams
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.coder import IndexedCoder

DATA = Path(__file__).parent / "data"
LEGACY = sorted((Path(__file__).parent / "legacy_streams").glob("v2_*.ckbd"))  # outside data/: not test photos
C = TypeVar("C", Encoder, Decoder)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.open()


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder.open()


def on_constriction(codec: C) -> C:
    """The same codec on constriction (the definition of the format) instead of the compiled coder."""
    clone, model = copy.copy(codec), copy.copy(codec.model)
    model.y_coder = IndexedCoder(model.y_coder.tables, compiled=False)
    model.z_coder = IndexedCoder(model.z_coder.tables, compiled=False)
    clone.model = model
    return clone


@pytest.fixture(scope="module")
def split_file(encoder: Encoder) -> tuple[np.ndarray, bytes]:
    """A noisy image whose passes are large enough to be cut into substreams."""
    image = np.random.default_rng(0).integers(0, 256, (512, 576, 3), dtype=np.uint8)
    encoder.coder_threads = 1
    return image, encoder.encode(image)


def test_legacy_files_exist() -> None:
    assert len(LEGACY) >= 3


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.stem)
def test_files_written_before_substreams_decode_to_the_same_pixels(
        path: Path, encoder: Encoder, decoder: Decoder) -> None:
    data = path.read_bytes()
    assert not bs.unpack(data).header.substreams
    expected = np.asarray(Image.open(path.with_suffix(".decoded.png")))
    for threads in (1, 2, 4):
        decoder.coder_threads = threads
        np.testing.assert_array_equal(decoder.decode(data), expected)
    np.testing.assert_array_equal(on_constriction(decoder).decode(data), expected)
    original = np.asarray(Image.open(DATA / f"{path.stem.removeprefix('v2_')}.png").convert("RGB"))
    assert encoder.encode(original) == data  # small images keep one stream per pass: the same bytes


def test_every_thread_count_writes_and_reads_the_same_file(
        encoder: Encoder, decoder: Decoder, split_file: tuple[np.ndarray, bytes]) -> None:
    image, data = split_file
    stream = bs.unpack(data)
    rows = stream.header.y_h
    counts = [len(substreams.parse(p, rows, True)) for p in (stream.anchors, stream.nonanchors)]
    assert stream.header.substreams and max(counts) > 1
    for threads in (2, 3, 4):
        encoder.coder_threads = threads
        assert encoder.encode(image) == data
    decoded = []
    for threads in (1, 2, 3, 4):
        decoder.coder_threads = threads
        decoded.append(decoder.decode(data))
    decoded.append(on_constriction(decoder).decode(data))
    for other in decoded[1:]:
        np.testing.assert_array_equal(other, decoded[0])


@pytest.mark.skipif(rangecoder.compiled is None, reason="the compiled range coder is not built here")
def test_without_the_compiled_coder_the_file_is_the_same(
        encoder: Encoder, split_file: tuple[np.ndarray, bytes]) -> None:
    image, data = split_file
    assert on_constriction(encoder).encode(image) == data


def broken_files(data: bytes) -> dict[str, tuple[bytes, str]]:
    """The split file with its anchors' table of contents reordered, or cut short."""
    stream = bs.unpack(data)
    parts = substreams.parse(stream.anchors, stream.header.y_h, True)
    assert len(parts) > 2 and len(parts[0]) != len(parts[1])
    swapped = substreams.join([parts[1], parts[0], *parts[2:]], [b""])[0][: -len(b"".join(parts))]
    reordered = swapped + b"".join(parts)
    assert len(reordered) == len(stream.anchors) and reordered != stream.anchors
    cut = stream.anchors[:2]
    header = replace(stream.header, anchor_length=len(cut))
    return {
        "reordered": (bs.pack(replace(stream, anchors=reordered)), "corrupt|checksum"),
        "truncated": (bs.pack(bs.Bitstream(header, stream.z, cut, stream.nonanchors)), "truncated table of contents"),
    }


@pytest.mark.parametrize("kind", ["reordered", "truncated"])
def test_broken_contents_are_one_line_errors_and_write_nothing(
        kind: str, split_file: tuple[np.ndarray, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, message = broken_files(split_file[1])[kind]
    src, out = tmp_path / "bad.ckbd", tmp_path / "bad.png"
    src.write_bytes(bad)
    code = main(["decode", str(src), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert any(word in err for word in message.split("|")), err


def test_profile_reports_the_substreams_and_the_coder_threads(decoder: Decoder, split_file: tuple[np.ndarray, bytes]
                                                              ) -> None:
    from ckbd.tools.profile_codec import coder_split

    _, data = split_file
    counts, workers = coder_split(decoder, data)
    assert min(counts) > 1
    decoder.coder_threads = 1
    assert coder_split(decoder, data) == (counts, 1)
    decoder.coder_threads = 64
    expected = max(counts) if rangecoder.compiled is not None else 1  # constriction codes on one thread
    assert coder_split(decoder, data) == (counts, expected)
    decoder.coder_threads = 0


def test_max_substreams_one_writes_the_single_stream_file(split_file: tuple[np.ndarray, bytes],
                                                          decoder: Decoder) -> None:
    """What files for readers from before substreams are: the same symbols, one stream per pass."""
    image, data = split_file
    with Encoder.open(max_substreams=1, coder_threads=2) as single:
        one = single.encode(image)
    stream = bs.unpack(one)
    assert not stream.header.substreams and len(one) < len(data)
    assert stream.header.symbols_crc == bs.unpack(data).header.symbols_crc
    np.testing.assert_array_equal(decoder.decode(one), decoder.decode(data))
    with Encoder.open(max_substreams=3) as capped:
        capped_stream = bs.unpack(capped.encode(image))
    assert max(substreams.counts(capped_stream.anchors, capped_stream.nonanchors, stream.header.y_h, True)) == 3
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_substreams"):
            Encoder.open(max_substreams=bad)


def test_bench_substreams_reports_the_bytes_the_cuts_add(split_file: tuple[np.ndarray, bytes], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    image, data = split_file
    Image.fromarray(image).save(tmp_path / "noise.png")
    Image.fromarray(image[:64, :96]).save(tmp_path / "small.png")
    out = tmp_path / "substreams.json"
    assert main(["bench", "substreams", str(tmp_path), "--json", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    noise, small = sorted(report["images"], key=lambda row: row["name"])
    assert noise["bytes_chosen"] == len(data) and min(noise["substreams"]) > 1
    assert 0 < noise["bytes_chosen"] - noise["bytes_single"] < 0.001 * noise["bytes_single"]
    assert small["substreams"] == [1, 1] and small["bytes_chosen"] == small["bytes_single"]
    assert report["bytes_single"] == noise["bytes_single"] + small["bytes_single"]
    assert "total" in capsys.readouterr().out
    assert main(["bench", "substreams", str(tmp_path / "small.png"), "--size", "512x576", "-q",
                 "--json", str(tmp_path / "resized.json")]) == 0
    (resized,) = json.loads((tmp_path / "resized.json").read_text())["images"]
    assert (resized["height"], resized["width"]) == (512, 576)
