"""The command line's contract: exit codes, checked arguments, valid JSON, clean progress, ``info``, ``eval`` plots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ckbd.cli.main import main
from ckbd.runtime.bitstream import FORMAT_VERSION

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))
DEFAULT_MODEL = Path(__file__).parents[1] / "src" / "ckbd" / "assets" / "default"


def ckbd(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text: str) -> object:
    """json.loads that refuses Infinity/NaN, as every other JSON parser does."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_version_names_the_package_and_the_bitstream_it_writes(capsys):
    from ckbd import __version__

    code, out, _ = ckbd(capsys, "--version")
    assert code == 0
    assert __version__ in out and f"bitstream version {FORMAT_VERSION}" in out


def test_exit_codes(capsys, tmp_path):
    code, _, err = ckbd(capsys, "encode", "--no-such-option", str(IMAGES[0]))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "ckbd encode --help" in err
    not_ckbd = tmp_path / "x.ckbd"
    not_ckbd.write_bytes(b"hello, not a bitstream")
    code, _, err = ckbd(capsys, "info", str(not_ckbd))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(Exception, match="not a ckbd file"):  # --debug after the command: the traceback
        main(["info", str(not_ckbd), "--debug"])


@pytest.mark.parametrize(("args", "words"), [
    (["encode", "IMG", "--threads", "-3"], ["--threads"]),
    (["decode", "X.ckbd", "-b", "bogus"], ["onnxruntime", "tensorrt", "torch"]),
    (["decode", "X.ckbd", "--precision", "bogus"], ["fp32", "fp16", "int8"]),
    (["encode", "IMG", "--psnr", "true"], ["'true' is not a file", "--psnr"]),
])
def test_bad_options_are_usage_errors_that_list_the_choices(args, words, capsys):
    args = [str(IMAGES[0]) if a == "IMG" else a for a in args]
    code, out, err = ckbd(capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert out == ""


def test_decode_refuses_an_original_of_another_size_before_writing(capsys, tmp_path):
    sizes = {Image.open(p).size: p for p in IMAGES}
    assert len(sizes) >= 2, "the test images should differ in size"
    first, other = list(sizes.values())[:2]
    stream = tmp_path / "a.ckbd"
    assert ckbd(capsys, "encode", str(first), "-o", str(stream), "--threads", "1")[0] == 0
    code, _, err = ckbd(capsys, "decode", str(stream), "-o", str(tmp_path / "a.png"), "--original", str(other),
                        "--threads", "1")
    assert code == 1 and "--original" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()


def test_a_redirected_batch_prints_plain_lines_and_recurses_into_folders(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(IMAGES[0], src / IMAGES[0].name)
    shutil.copy(IMAGES[1], src / "sub" / IMAGES[1].name)
    command = [sys.executable, "-m", "ckbd", "encode", str(src), "-o", str(tmp_path / "out"), "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "encode: 2/2 files" in result.stderr
    assert (tmp_path / "out" / IMAGES[0].with_suffix(".ckbd").name).is_file()
    assert (tmp_path / "out" / "sub" / IMAGES[1].with_suffix(".ckbd").name).is_file()  # the layout is kept

    quiet = subprocess.run([*command[:-3], str(tmp_path / "out2"), "-q"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_plain_progress_lines(monkeypatch, capsys):
    from ckbd import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    for _ in progress.progress(range(3), desc="work", unit="file"):
        progress.notice("between")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0::2] == ["notice: between"] * 3  # a notice never shares a line with progress
    assert [line.split(",")[0] for line in lines[1::2]] == ["work: 1/3 files (33 %)", "work: 2/3 files (67 %)",
                                                            "work: 3/3 files (100 %)"]
    progress.set_quiet(True)
    try:
        for _ in progress.progress(range(2), desc="work"):
            progress.notice("hidden")
    finally:
        progress.set_quiet(False)
    assert capsys.readouterr().err == ""


def test_json_has_null_for_an_infinite_psnr():
    from ckbd.tools.report.jsonfile import dumps

    text = dumps({"psnr": float("inf"), "rows": [{"psnr": float("nan")}, {"psnr": 30.5}]})
    assert strict_json(text) == {"psnr": None, "rows": [{"psnr": None}, {"psnr": 30.5}]}


def test_info_is_a_tidy_summary(capsys, tmp_path):
    stream = tmp_path / "a.ckbd"
    assert ckbd(capsys, "encode", str(IMAGES[0]), "-o", str(stream), "--threads", "1")[0] == 0
    code, out, _ = ckbd(capsys, "info", str(stream))
    assert code == 0
    width, height = Image.open(IMAGES[0]).size
    bpp = 8 * stream.stat().st_size / (width * height)
    assert f"bitstream version {FORMAT_VERSION}" in out
    assert "mbt2018-ckbd N=64 M=96 (the shipped default model)" in out
    assert f"{width}x{height} pixels" in out and f"{bpp:.4f} bpp" in out
    assert "{" not in out and "payloads" in out and " B" in out

    code, out, _ = ckbd(capsys, "info", str(stream), "--json")
    summary = strict_json(out)
    assert code == 0 and summary["bytes"] == stream.stat().st_size and summary["bpp"] == round(bpp, 4)
    assert summary["model"]["arch"] == "mbt2018-ckbd" and summary["bitstream_version"] == FORMAT_VERSION
    assert summary["entropy_params"] in ("float", "integer")
    assert sum(summary["payload_bytes"].values()) == summary["bytes"]


def test_readable_sizes():
    from ckbd.cli.info_format import readable_size

    assert [readable_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20)] == ["0 B", "1023 B", "1.0 KiB", "1.5 KiB",
                                                                           "5.0 MiB"]


def test_eval_checks_its_outputs_before_any_work(capsys, tmp_path, monkeypatch):
    code, out, err = ckbd(capsys, "eval", str(IMAGES[0]), "--json", str(tmp_path / "nonexistent" / "x.json"))
    assert code == 2 and "does not exist" in err and out == ""
    pytest.importorskip("matplotlib")
    code, out, err = ckbd(capsys, "eval", str(IMAGES[0]), "--plot", str(tmp_path / "e.xyz"))
    assert code == 2 and ".xyz" in err and ".png" in err and out == ""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were not installed
    code, out, err = ckbd(capsys, "eval", str(IMAGES[0]), "--plot", str(tmp_path / "e.png"))
    assert code == 1 and "pip install '.[plots]'" in err and out == ""


def test_eval_of_a_flat_image_plots_and_writes_valid_json(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(flat)
    code, _, err = ckbd(capsys, "eval", str(flat), "--qualities", "50,95", "--threads", "1",
                        "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png"))
    assert code == 0, err
    report = strict_json((tmp_path / "e.json").read_text())
    psnrs = [p["psnr"] for curve in report["curves"].values() for p in curve]
    assert None in psnrs  # lossless Pillow points: null, not Infinity
    assert "left out of the plot" in err and (tmp_path / "e.png").stat().st_size > 0


def test_eval_plots_one_labelled_series_per_model(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from ckbd.tools.report import plots

    other = tmp_path / "a" / "default"  # a second model with the same folder name
    shutil.copytree(DEFAULT_MODEL, other)
    drawn: dict[str, list] = {}
    monkeypatch.setattr(plots, "rd_curves", lambda curves, path, **kw: drawn.update(curves))
    code, _, err = ckbd(capsys, "eval", str(IMAGES[0]), "-m", str(DEFAULT_MODEL), "-m", str(other),
                        "--qualities", "50", "--threads", "1", "--plot", str(tmp_path / "rd.png"))
    assert code == 0, err
    series = [label for label in drawn if "Pillow" not in label]
    assert series == ["ckbd default", "ckbd default (2)"] and all(len(drawn[s]) == 1 for s in series)


def test_default_data_folders_do_not_depend_on_the_current_folder(tmp_path, monkeypatch):
    from ckbd import data_paths as options

    def outcome() -> str:
        try:
            return str(options.default_kodak_dir())
        except Exception as exc:  # noqa: BLE001 - the message is the outcome being compared
            return str(exc)

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    first = outcome()
    (tmp_path / "shared" / "data" / "kodak").mkdir(parents=True)  # a decoy at ../shared/data from the new cwd
    assert outcome() == first
    assert options.SHARED_DATA.is_absolute()
