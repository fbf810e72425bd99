"""Outputs never destroy a user's file: no clobbering without --force, never an input, no special files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import rgb_array
from PIL import Image

from ckbd.cli.main import main
from ckbd.cli.outputs import output_problem, plan_outputs
from ckbd.errors import CkbdError, UsageError
from ckbd.runtime.atomic import atomic_path, atomic_write_bytes


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 56)) -> Path:
    Image.fromarray(rgb_array(*size, seed=seed)).save(path)
    return path


def _cli(*args: str) -> int:
    return main(["--quiet", *args])


# --- the policy itself ------------------------------------------------------------------------

def test_existing_file_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    assert "already exists; use --force" in (output_problem(target, force=False) or "")
    assert output_problem(target, force=True) is None
    assert output_problem(tmp_path / "new.png", force=False) is None


def test_an_input_is_never_replaced_even_with_force(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    link = tmp_path / "hard.png"
    os.link(target, link)
    for path in (target, link):
        assert "is the input file" in (output_problem(path, force=True, protected=[target]) or "")


def test_fifo_and_directory_are_refused_even_with_force(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "a FIFO" in (output_problem(fifo, force=True) or "")
    assert "a directory" in (output_problem(tmp_path, force=True) or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node (os.mknod) needs root")
def test_device_node_is_refused_and_kept(tmp_path: Path) -> None:
    device = tmp_path / "null"
    os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
    assert "character device" in (output_problem(device, force=True) or "")
    with pytest.raises(CkbdError, match="character device"):
        atomic_write_bytes(device, b"data")  # the low-level writer refuses it too
    assert os.stat(device).st_rdev == os.makedev(1, 3)


def test_symlink_needs_force_and_then_its_target_is_replaced(tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    assert "symbolic link" in (output_problem(link, force=False) or "")
    assert output_problem(link, force=True) is None
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_duplicate_outputs_are_an_error_naming_both_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "k.png", tmp_path / "k.tiff"
    with pytest.raises(UsageError, match="k.png and .*k.tiff"):
        plan_outputs([(a, tmp_path / "out" / "k.ckbd"), (b, tmp_path / "out" / "k.ckbd")], force=True)


def test_no_clobber_publish_loses_a_race_safely(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(CkbdError, match="already exists"):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another writer got there first
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# --- the command line -------------------------------------------------------------------------

def test_decode_does_not_replace_the_original_next_to_the_stream(tmp_path: Path) -> None:
    photo = _png(tmp_path / "photo.png")
    before = photo.read_bytes()
    assert _cli("encode", str(photo)) == 0
    assert _cli("decode", str(tmp_path / "photo.ckbd")) == 1
    assert photo.read_bytes() == before
    assert _cli("decode", str(tmp_path / "photo.ckbd"), "--force") == 0
    assert photo.read_bytes() != before  # --force replaces it, as asked


@pytest.mark.parametrize("command,suffix", [("encode", ".ckbd"), ("encode --json", ".json"), ("decode", ".png"),
                                            ("train", ".pt")])
def test_an_existing_output_is_exit_code_1_for_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             command: str, suffix: str) -> None:
    """One rule for "output exists" (ckbd.errors.OutputExistsError): exit 1, the file untouched."""
    photo = _png(tmp_path / "a.png")
    assert _cli("encode", str(photo), "-o", str(tmp_path / "a.ckbd")) == 0
    existing = tmp_path / f"existing{suffix}"
    existing.write_bytes(b"precious")
    if command == "train":
        pytest.importorskip("torch")
        args = ["train", "--data", str(tmp_path), "-o", str(existing)]
    else:
        source = photo if command.startswith("encode") else tmp_path / "a.ckbd"
        target = ["--json", str(existing), "-o", str(tmp_path / "b.ckbd")] if "--json" in command else ["-o", str(existing)]
        args = [command.split()[0], str(source), *target]
    capsys.readouterr()
    assert _cli(*args) == 1
    assert existing.read_bytes() == b"precious"
    assert "already exists" in capsys.readouterr().err


def test_encode_onto_its_own_input_is_refused_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = _png(tmp_path / "a.png")
    before = photo.read_bytes()
    assert _cli("encode", str(photo), "-o", str(photo), "--force") == 1
    assert photo.read_bytes() == before
    assert "is the input file" in capsys.readouterr().err


def test_decode_never_writes_over_the_original(tmp_path: Path) -> None:
    photo = _png(tmp_path / "a.png")
    assert _cli("encode", str(photo), "-o", str(tmp_path / "a.ckbd")) == 0
    before = photo.read_bytes()
    assert _cli("decode", str(tmp_path / "a.ckbd"), "-o", str(photo), "--original", str(photo), "-f") == 1
    assert photo.read_bytes() == before


def test_same_stem_in_a_folder_is_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "kodim23.png")
    Image.fromarray(rgb_array(40, 56, seed=1)).save(folder / "kodim23.tiff")
    assert _cli("encode", str(folder), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "kodim23.png" in err and "kodim23.tiff" in err
    assert not list(tmp_path.rglob("*.ckbd"))


def test_fifo_target_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = _png(tmp_path / "a.png")
    fifo = tmp_path / "out.ckbd"
    os.mkfifo(fifo)
    assert _cli("encode", str(photo), "-o", str(fifo), "-f") == 1
    assert "FIFO" in capsys.readouterr().err
    assert Path(fifo).is_fifo()


def test_batch_reports_a_refused_output_and_writes_the_others(tmp_path: Path) -> None:
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.ckbd").write_bytes(b"keep me")
    assert _cli("encode", str(a), str(b), "-o", str(out)) == 1
    assert (out / "a.ckbd").read_bytes() == b"keep me"
    assert (out / "b.ckbd").stat().st_size > 0


@pytest.mark.parametrize(("name", "word"), [("x.jpg", "lossily"), ("x.gif", "256 colours"), ("x.ico", "256x256")])
def test_lossy_decode_formats_need_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                          word: str) -> None:
    photo = _png(tmp_path / "a.png")
    assert _cli("encode", str(photo), "-o", str(tmp_path / "a.ckbd")) == 0
    assert _cli("decode", str(tmp_path / "a.ckbd"), "-o", str(tmp_path / name)) == 1
    assert word in capsys.readouterr().err and not (tmp_path / name).exists()
    fmt = Path(name).suffix[1:]
    assert _cli("decode", str(tmp_path / "a.ckbd"), "-o", str(tmp_path / name), "--format", fmt) == 0
    assert (tmp_path / name).exists()


def test_webp_is_written_losslessly(tmp_path: Path) -> None:
    photo = _png(tmp_path / "a.png")
    assert _cli("encode", str(photo), "-o", str(tmp_path / "a.ckbd")) == 0
    assert _cli("decode", str(tmp_path / "a.ckbd"), "-o", str(tmp_path / "a.webp")) == 0
    assert _cli("decode", str(tmp_path / "a.ckbd"), "-o", str(tmp_path / "b.png")) == 0
    webp = np.asarray(Image.open(tmp_path / "a.webp").convert("RGB"))
    assert np.array_equal(webp, np.asarray(Image.open(tmp_path / "b.png")))


def test_stdin_stdout_pipeline(tmp_path: Path) -> None:
    photo = _png(tmp_path / "a.png")
    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1"}
    with open(photo, "rb") as fh:
        enc = subprocess.run([sys.executable, "-m", "ckbd", "encode", "-", "-o", "-"], stdin=fh,
                             capture_output=True, env=env, timeout=300)
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout[:4] == b"CKBD"  # only the stream on stdout; the summary went to stderr
    dec = subprocess.run([sys.executable, "-m", "ckbd", "decode", "-", "-o", str(tmp_path / "out.png")],
                         input=enc.stdout, capture_output=True, env=env, timeout=300)
    assert dec.returncode == 0, dec.stderr
    assert Image.open(tmp_path / "out.png").size == Image.open(photo).size
    info = subprocess.run([sys.executable, "-m", "ckbd", "info", "-"], input=enc.stdout, capture_output=True,
                          env=env, timeout=300)
    assert info.returncode == 0 and str(len(enc.stdout)).encode() in info.stdout


def test_dev_stdout_is_stdout_and_the_link_stays(tmp_path: Path) -> None:
    """``-o /dev/stdout`` writes to stdout (as root it used to replace the /dev/stdout symlink)."""
    photo = _png(tmp_path / "a.png")
    env = {**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "ckbd", "encode", str(photo), "-o", "/dev/stdout"],
                            capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] == b"CKBD"
    assert os.path.islink("/dev/stdout")


@pytest.mark.parametrize("args", [["encode", "-"], ["encode", "-", "a.png", "-o", "x"]])
def test_stdin_misuse_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    assert _cli(*args) == 2


# --- temp files and signals ---------------------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_temp_file_removed_when_killed(tmp_path: Path, signame: str) -> None:
    code = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from ckbd.runtime.atomic import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        f"    os.kill(os.getpid(), signal.{signame})\n"
        "    time.sleep(30)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.png")], timeout=120)
    assert result.returncode == -getattr(signal, signame)
    assert list(tmp_path.iterdir()) == []


def test_signal_cleanup_chains_to_an_installed_handler(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "def handler(signum, frame):\n"
        "    raise SystemExit(7)\n"
        "signal.signal(signal.SIGTERM, handler)\n"
        "from ckbd.runtime.atomic import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    while True: pass\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.png")], timeout=120)
    assert result.returncode == 7
    assert list(tmp_path.iterdir()) == []


def test_a_handler_that_continues_keeps_the_write_going(tmp_path: Path) -> None:
    """A loop that saves on SIGTERM (``train``) must not lose the file being written when it arrives."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "seen = []\n"
        "signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))\n"
        "from ckbd.runtime.atomic import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    tmp.write_bytes(b'whole')\n"
        "assert seen == [signal.SIGTERM]\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt.pt")], timeout=120)
    assert result.returncode == 0
    assert (tmp_path / "ckpt.pt").read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("stream", ["stdin", "stdout"])
def test_binary_data_from_or_to_a_terminal_is_refused(tmp_path: Path, stream: str) -> None:
    import pty

    photo = _png(tmp_path / "a.png")
    args = ["encode", "-", "-o", str(tmp_path / "x.ckbd")] if stream == "stdin" else ["encode", str(photo), "-o", "-"]
    leader, follower = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "ckbd", *args], **{stream: follower}, stderr=subprocess.PIPE,
                                env={**os.environ, "CKBD_DEBUG": "", "NO_COLOR": "1"}, timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2 and b"terminal" in result.stderr


def test_a_report_cannot_go_to_stdout(tmp_path: Path) -> None:
    assert _cli("encode", str(_png(tmp_path / "a.png")), "--json", "-") == 2
