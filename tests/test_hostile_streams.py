"""Hostile streams: read header first, bounded by the header, limits on the padded size, no tracebacks."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import rgb_array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckbd.errors import BitstreamError, CkbdError, ImageError, ResourceError
from ckbd.runtime import bitstream as bs
from ckbd.runtime.codec import Decoder, Encoder, check_image
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.package import default_model_dir
from ckbd.runtime.stream_io import max_payload_bytes, read_stream
from ckbd.tools.check.fuzz import FAILURES, KINDS, classify, mutate


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def crafted(height: int, width: int, **lengths: int) -> bytes:
    """A header-only stream for the shipped model with a correct header CRC (payloads may be empty).

    ``lengths`` (z_len, a_len, na_len) rewrite the announced payload lengths, CRC recomputed.
    """
    from ckbd.tools.check.fuzz import _reseal, _split

    m = Manifest.load(default_model_dir())
    data = bs.pack(bs.Bitstream.build(height=height, width=width, arch_id=m.arch_id, fingerprint_hex=m.fingerprint,
                                      N=m.N, M=m.M, symbols_crc=0, z=b"", anchors=b"", nonanchors=b"",
                                      entropy_params=m.entropy_params))
    fields, payload = _split(data)
    fields.update(lengths)
    return _reseal(fields, payload)


def test_crafted_63_byte_8k_stream_is_valid_header() -> None:
    data = crafted(8192, 8192)
    assert len(data) == 63 == bs.HEADER_SIZE
    assert read_stream(io.BytesIO(data)).header.width == 8192


@pytest.mark.parametrize("command", ["decode", "encode"])
def test_8k_job_fails_in_one_line_under_a_memory_cap(tmp_path: Path, command: str) -> None:
    """A 63-byte stream announcing 8192x8192, or an 8192x8192 black PNG (195 KB), under a memory cap
    too small for the job: a one-line error, exit 1, nothing written."""
    from PIL import Image

    if command == "decode":
        path = tmp_path / "huge.ckbd"
        path.write_bytes(crafted(8192, 8192))
    else:
        path = tmp_path / "huge.png"
        Image.new("RGB", (8192, 8192)).save(path)
    cap = 1536 << 20  # enough to start, not for an 8K job

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
           "CKBD_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "ckbd", command, str(path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=600, preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("notice:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache", path.name])


def test_pixel_limit_counts_padded_pixels() -> None:
    with pytest.raises(BitstreamError, match="padded"):
        bs.peek_header(crafted(1, 2**26))  # 2**26 pixels as given, 64 times more after padding
    bs.peek_header(crafted(64, 2**22))  # exactly the limit once padded: accepted


def test_encoder_limit_counts_padded_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bs, "DEFAULT_MAX_PIXELS", 64 * 64)
    with pytest.raises(ImageError, match="padded"):
        check_image(np.zeros((1, 65, 3), np.uint8))  # 65 pixels, 64x128 padded
    check_image(np.zeros((64, 64, 3), np.uint8))


def test_dev_zero_is_refused_after_the_header(tmp_path: Path) -> None:
    with pytest.raises(BitstreamError, match="bad magic"):
        read_stream(Path("/dev/zero"))


def test_file_larger_than_its_header_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.ckbd"
    with open(path, "wb") as fh:
        fh.write(crafted(64, 64))
        fh.truncate(20 * 2**30)  # a sparse 20 GB file
    tracemalloc.start()
    with pytest.raises(BitstreamError, match="trailing garbage"):
        read_stream(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


class _Zeros(io.RawIOBase):
    """An endless, non-seekable stream (like a pipe from /dev/zero), counting what was read."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix, self.consumed = prefix, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        head, self.prefix = self.prefix[:n], self.prefix[n:]
        chunk = head + b"\0" * (n - len(head))
        self.consumed += len(chunk)
        return chunk


def test_endless_pipe_after_a_valid_header_reads_only_the_announced_bytes() -> None:
    data = crafted(64, 64, z_len=100, a_len=50, na_len=25)
    pipe = _Zeros(data)
    with pytest.raises(BitstreamError, match="trailing garbage"):
        read_stream(pipe)  # type: ignore[arg-type]
    assert pipe.consumed <= bs.HEADER_SIZE + 175 + 1


def test_payload_lengths_beyond_what_the_latents_can_hold_are_refused_unread() -> None:
    data = crafted(64, 64, z_len=2**32 - 1, a_len=2**32 - 1, na_len=2**32 - 1)
    pipe = _Zeros(data)
    with pytest.raises(BitstreamError, match="payload bytes announced"):
        read_stream(pipe)  # type: ignore[arg-type]
    assert pipe.consumed == bs.HEADER_SIZE


def test_payload_bound_holds_for_real_streams() -> None:
    encoder = Encoder.open(threads=1)
    for seed, noise in ((0, False), (1, True)):
        image = rgb_array(64, 96, seed) if not noise else np.random.default_rng(seed).integers(0, 256, (64, 96, 3),
                                                                                                dtype=np.uint8)
        data = encoder.encode(image)
        header = bs.peek_header(data)
        assert header.payload_size <= max_payload_bytes(header)


def test_model_check_runs_before_payloads_are_read() -> None:
    m = Manifest.load(default_model_dir())
    data = crafted(64, 64)
    seen: list[bs.Header] = []
    pipe = _Zeros(data)
    with pytest.raises(CkbdError, match="refused"):
        def check(header: bs.Header) -> None:
            seen.append(header)
            raise CkbdError("refused")

        read_stream(pipe, check=check)  # type: ignore[arg-type]
    assert seen and seen[0].M == m.M and pipe.consumed == bs.HEADER_SIZE


# --- allocation failures ----------------------------------------------------------------------

class _FailingSession:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def get_inputs(self) -> list[object]:
        return []

    def get_outputs(self) -> list[object]:
        return []

    def run(self, names: object, feeds: object) -> object:
        raise self.exc


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "std::bad_alloc")])
def test_onnxruntime_allocation_failure_is_a_resource_error(exc: BaseException) -> None:
    from ckbd.runtime.ort_backend import OrtRunner

    with pytest.raises(ResourceError, match="out of memory"):
        OrtRunner(_FailingSession(exc)).run({})


def test_other_onnxruntime_errors_are_not_hidden() -> None:
    from ckbd.runtime.ort_backend import OrtRunner

    with pytest.raises(RuntimeError, match="shape"):
        OrtRunner(_FailingSession(RuntimeError("bad shape"))).run({})


def test_numpy_memory_error_in_a_batch_is_one_line_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from ckbd.cli.main import main

    Image.fromarray(rgb_array(40, 56)).save(tmp_path / "a.png")

    def explode(self: Encoder, image: np.ndarray) -> bytes:
        raise MemoryError

    monkeypatch.setattr(Encoder, "encode", explode)
    assert main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.ckbd")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0]
    assert not (tmp_path / "a.ckbd").exists()


# --- decoder-level fuzzing with crafted, resealed headers ------------------------------------

_CODEC: dict[str, object] = {}


def _codec() -> tuple[Decoder, list[bytes], list[np.ndarray]]:
    if not _CODEC:
        from ckbd.tools.check.fuzz import _images

        encoder, decoder = Encoder.open(threads=1), Decoder.open(threads=1)
        decoder.max_pixels = 256 * 256
        bases = [encoder.encode(image) for image in _images()]
        _CODEC.update(decoder=decoder, bases=bases, refs=[decoder.decode(b) for b in bases])
    return _CODEC["decoder"], _CODEC["bases"], _CODEC["refs"]  # type: ignore[return-value]


@settings(max_examples=120, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1), which=st.integers(0, 2))
def test_fuzz_decoder_with_resealed_headers(kind: str, seed: int, which: int) -> None:
    decoder, bases, refs = _codec()
    data = mutate(kind, bases[which], bases[(which + 1) % 3], np.random.default_rng(seed))
    try:
        stream = read_stream(io.BytesIO(data), decoder.max_pixels, check=decoder.check_header)
        outcome = classify(decoder.decode(stream.data), refs[which])
    except CkbdError as exc:
        assert "\n" not in str(exc)
        return
    assert outcome not in FAILURES
