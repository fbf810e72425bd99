"""Two-pass encode/decode on the exported graphs: exact latents, bad input, CLI, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ckbd.errors import BitstreamError, CkbdError, ImageError, ModelMismatchError
from ckbd.runtime import bitstream as bs
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.imageio import read_image

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))


def _export(tmp: Path, seed: int, parity: str = "even") -> Path:
    torch = pytest.importorskip("torch")
    from ckbd.export.onnx_export import export_model
    from ckbd.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig("mbt2018-ckbd", N=16, M=24, anchor_parity=parity)).eval()
    out = tmp / f"model-{seed}-{parity}"
    export_model(model, out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("codec"), seed=1)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("codec-other"), seed=2, parity="odd")


@pytest.fixture(scope="module")
def codec(model_dir: Path) -> tuple[Encoder, Decoder]:
    return Encoder.open(model_dir, threads=1), Decoder.open(model_dir, threads=1)


@pytest.fixture(scope="module")
def stream(codec: tuple[Encoder, Decoder]) -> bytes:
    return codec[0].encode(read_image(IMAGES[0]))


def _assert_same_latents(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("z_symbols", "anchor_symbols", "nonanchor_symbols", "anchor_hat", "nonanchor_hat"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.equals(b)


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_decoded_latents_equal_encoded(codec: tuple[Encoder, Decoder], path: Path) -> None:
    encoder, decoder = codec
    image = read_image(path)
    enc = encoder.encode_detailed(image)
    dec = decoder.decode_detailed(enc.data)
    _assert_same_latents(enc.latents, dec.latents)
    assert dec.image.shape == image.shape and dec.image.dtype == np.uint8
    assert (dec.header.height, dec.header.width) == image.shape[:2]


@pytest.mark.parametrize("size", [(67, 131), (1, 1), (1, 200), (65, 64), (128, 3)])
def test_odd_sizes_round_trip(codec: tuple[Encoder, Decoder], size: tuple[int, int]) -> None:
    encoder, decoder = codec
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    enc = encoder.encode_detailed(image)
    dec = decoder.decode_detailed(enc.data)
    _assert_same_latents(enc.latents, dec.latents)
    assert dec.image.shape == image.shape


def test_both_parities_round_trip(other_model_dir: Path) -> None:
    image = read_image(IMAGES[1])
    enc = Encoder.open(other_model_dir, threads=1).encode_detailed(image)
    dec = Decoder.open(other_model_dir, threads=1).decode_detailed(enc.data)
    _assert_same_latents(enc.latents, dec.latents)


def test_rate_close_to_estimate(codec: tuple[Encoder, Decoder]) -> None:
    """Payload bytes within 0.5 % of the ideal code length, plus each payload's final flush."""
    image = read_image(IMAGES[0])
    enc = codec[0].encode_detailed(image)
    payload_bits = 8 * (len(enc.data) - bs.HEADER_SIZE)
    assert enc.estimated_bits > 0
    assert payload_bits <= enc.estimated_bits * 1.005 + 3 * 64


def test_encoding_is_deterministic(codec: tuple[Encoder, Decoder]) -> None:
    image = read_image(IMAGES[2])
    assert codec[0].encode(image) == codec[0].encode(image)


def test_wrong_model_is_refused(stream: bytes, other_model_dir: Path) -> None:
    with pytest.raises(ModelMismatchError, match="decode with the model"):
        Decoder.open(other_model_dir, threads=1).decode(stream)


@pytest.mark.parametrize("cut", [0, 3, 10, bs.HEADER_SIZE - 1, bs.HEADER_SIZE + 1, -1])
def test_truncated_stream_is_refused(codec: tuple[Encoder, Decoder], stream: bytes, cut: int) -> None:
    with pytest.raises(BitstreamError):
        codec[1].decode(stream[:cut])


def test_flipped_payload_bits_are_detected(codec: tuple[Encoder, Decoder], stream: bytes) -> None:
    rng = np.random.default_rng(0)
    detected = 0
    for _ in range(30):
        data = bytearray(stream)
        pos = int(rng.integers(bs.HEADER_SIZE, len(data)))
        data[pos] ^= 1 << int(rng.integers(8))
        try:
            codec[1].decode(bytes(data))
        except BitstreamError:
            detected += 1
    assert detected == 30


def test_huge_header_refused_before_allocation(codec: tuple[Encoder, Decoder], stream: bytes) -> None:
    import struct
    import zlib

    body = bytearray(stream[: bs.HEADER_SIZE - 4])
    struct.pack_into("<II", body, 15, 10**6, 10**6)
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))) + stream[bs.HEADER_SIZE:]
    with pytest.raises(BitstreamError, match="pixel"):
        codec[1].decode(forged)


def test_bad_image_arrays_are_refused(codec: tuple[Encoder, Decoder]) -> None:
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)):
        with pytest.raises(ImageError):
            codec[0].encode(bad)


def test_fuzzed_streams_fail_cleanly(codec: tuple[Encoder, Decoder], stream: bytes) -> None:
    """Mutation loop: random byte edits, truncations and splices never escape as a non-ckbd error."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        data = bytearray(stream)
        for _ in range(int(rng.integers(1, 4))):
            op = rng.integers(3)
            pos = int(rng.integers(len(data)))
            if op == 0:
                data[pos] = int(rng.integers(256))
            elif op == 1:
                del data[pos:]
                if not data:
                    break
            else:
                data[pos:pos] = rng.bytes(int(rng.integers(1, 16)))
        try:
            codec[1].decode(bytes(data))
        except CkbdError:
            pass


# --- command line -----------------------------------------------------------------------------


def _ckbd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cli_encode_decode_info(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.ckbd"
    r = _ckbd("encode", str(IMAGES[0]), "-o", str(out), "--model", str(model_dir), "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = _ckbd("decode", str(out), "-o", str(tmp_path / "a.png"), "--model", str(model_dir),
              "--original", str(IMAGES[0]), "--json", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    assert read_image(tmp_path / "a.png").shape == read_image(IMAGES[0]).shape
    r = _ckbd("info", str(out), "--json")
    assert r.returncode == 0 and '"arch": "mbt2018-ckbd"' in r.stdout


def test_cli_batch_with_a_bad_file(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in IMAGES:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"not a png")
    r = _ckbd("encode", str(src), "-o", str(tmp_path / "enc"), "--model", str(model_dir), "--json",
              str(tmp_path / "s.json"))
    assert r.returncode == 1
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == sorted(p.stem + ".ckbd" for p in IMAGES)
    assert '"failures"' in (tmp_path / "s.json").read_text()


def test_cli_corrupt_input_leaves_no_output(model_dir: Path, stream: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckbd"
    bad.write_bytes(stream[: len(stream) // 2])
    r = _ckbd("decode", str(bad), "-o", str(tmp_path / "out.png"), "--model", str(model_dir))
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_cli_unwritable_output(model_dir: Path, tmp_path: Path) -> None:
    r = _ckbd("encode", str(IMAGES[0]), "-o", str(tmp_path / "missing" / "dir" / "x.ckbd"), "--model", str(model_dir))
    assert r.returncode == 1 and "cannot write" in r.stderr


def test_runtime_runs_without_torch(model_dir: Path, tmp_path: Path) -> None:
    """Encode and decode in a process where importing torch fails."""
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        from ckbd.cli.main import run
        run(["encode", {str(IMAGES[1])!r}, "-o", {str(tmp_path / 'x.ckbd')!r}, "--model", {str(model_dir)!r}])
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    script2 = script.replace(f'"encode", {str(IMAGES[1])!r}, "-o", {str(tmp_path / "x.ckbd")!r}',
                             f'"decode", {str(tmp_path / "x.ckbd")!r}, "-o", {str(tmp_path / "x.png")!r}')
    r = subprocess.run([sys.executable, "-c", script2], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.png").is_file()


def test_roundtrip_check_tool(codec: tuple[Encoder, Decoder]) -> None:
    from ckbd.tools.check.roundtrip import check

    row = check(*codec, IMAGES[0])
    assert row.latents_identical
    assert row.bytes == len(codec[0].encode(read_image(IMAGES[0])))
    assert 0 < row.estimated_bytes < row.bytes


def test_missing_precision_variant_is_an_error(model_dir: Path) -> None:
    from ckbd.errors import ModelError

    with pytest.raises(ModelError, match="no int8 graphs"):
        Decoder.open(model_dir, threads=1, precision="int8")


def test_single_file_error_names_the_file_once(model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckbd"
    empty.write_bytes(b"")
    r = _ckbd("decode", str(empty), "--model", str(model_dir))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {empty}: not a ckbd file: the input is empty"]


def test_cli_profile_writes_stage_times_and_plot(model_dir: Path, tmp_path: Path) -> None:
    import json

    r = _ckbd("profile", str(IMAGES[0]), "--model", str(model_dir), "--repeat", "2", "--threads", "1",
              "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    decode = report["mean_decode_ms"]
    assert set(decode) == {"z_decode", "hyper_synthesis", "anchor_params", "anchor_decode", "nonanchor_params",
                           "nonanchor_decode", "latent_synthesis", "total"}
    assert decode["total"] >= decode["latent_synthesis"] > 0
    assert "analysis" in report["mean_encode_ms"] and report["images"][0]["bpp"] > 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "latent_synthesis" in r.stdout
