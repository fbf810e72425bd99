"""The run plan of encode/decode (one options dataclass, one placement checked once, codecs per worker)
and the header of a decoded file parsed once."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from ckbd.cli.main import main
from ckbd.cli.run_plan import BoundWork, CodecOptions, Placement, RunPlan, thread_share
from ckbd.errors import UsageError
from ckbd.runtime import bitstream
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.imageio import read_image
from ckbd.runtime.stream_io import read_stream

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("placement", "message"), [
    (dict(jobs=2, server="127.0.0.1:1"), "--jobs"),
    (dict(jobs=2, engine="ray"), "--jobs"),
    (dict(engine="ray", server="127.0.0.1:1"), "do not combine"),
    (dict(address="127.0.0.1:6379"), "--address needs --engine ray"),
    (dict(engine="spark"), "unknown engine"),
])
def test_a_placement_that_cannot_run_is_a_usage_error(placement: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Placement(**placement)


def test_codec_options_refuse_a_combination_before_any_work() -> None:
    with pytest.raises(UsageError, match="bf16"):
        CodecOptions(backend="onnxruntime", precision="bf16")


def test_threads_are_shared_between_jobs() -> None:
    assert thread_share(0, 1) == 0 and thread_share(4, 2) == 2 and thread_share(1, 4) == 1


def test_each_worker_thread_opens_its_own_codecs_once() -> None:
    opened: list[int] = []

    def codecs(open_codec):  # type: ignore[no-untyped-def]
        opened.append(threading.get_ident())
        return open_codec("decode")

    bound = BoundWork(lambda codec, src, dst: {"codec": codec}, codecs, lambda kind: f"{kind}-{len(opened)}")
    assert bound(Path("a"), Path("b")) == bound(Path("c"), Path("d")) == {"codec": "decode-1"}
    other = threading.Thread(target=lambda: bound(Path("e"), Path("f")))
    other.start()
    other.join()
    assert len(opened) == 2 and len(set(opened)) == 2
    copy = pickle.loads(pickle.dumps(BoundWork(_row, _codecs, _opener)))  # as Ray ships it: a recipe
    assert copy(Path("x"), Path("y")) == {"src": "x", "codec": "decode"}


def _row(codec: str, src: Path, dst: Path) -> dict[str, str]:
    return {"src": str(src), "codec": codec}


def _codecs(open_codec) -> str:  # type: ignore[no-untyped-def]
    return open_codec("decode")


def _opener(kind: str) -> str:
    return kind


def test_a_local_plan_opens_the_package_once_and_passes_the_budget_to_open() -> None:
    run = RunPlan(CodecOptions(max_memory="1G"), Placement())
    assert run.package is not None and run.budget.limit == 1 << 30
    with run.opener()("decode") as decoder:
        assert decoder.model.memory is run.budget and decoder.model.package is run.package


def test_decode_parses_the_header_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Encoder.open() as encoder:
        (tmp_path / "a.ckbd").write_bytes(encoder.encode(read_image(DATA / "kodim23_crop.png")))
    calls = []
    real = bitstream.peek_header
    monkeypatch.setattr(bitstream, "peek_header", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["decode", str(tmp_path / "a.ckbd"), "-o", str(tmp_path / "a.png")]) == 0
    assert len(calls) == 1 and (tmp_path / "a.png").is_file()


def test_a_stream_checked_for_another_decoder_is_checked_again(tmp_path: Path) -> None:
    with Encoder.open() as encoder, Decoder.open() as decoder:
        path = tmp_path / "a.ckbd"
        path.write_bytes(encoder.encode(read_image(DATA / "kodim08_crop.png")))
        unchecked = read_stream(path)
        checked = read_stream(path, check=decoder.check_header)
        assert checked.checked_by == decoder.check_header and unchecked.checked_by is None
        calls = []
        real_check = decoder.check_header
        decoder.check_header = lambda header: calls.append(header) or real_check(header)  # type: ignore[method-assign]
        assert (decoder.decode(unchecked) == decoder.decode(path.read_bytes())).all()
        assert len(calls) == 2  # the unchecked stream and the bytes; never skipped
