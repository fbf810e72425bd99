"""``ckbd check ...`` and ``ckbd bench ...`` helpers as commands: help, a real round trip, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckbd.cli.main import main

DATA = Path(__file__).parent / "data"

COMMANDS = {
    ("check", "roundtrip"): ["--model", "--backend", "--json"],
    ("check", "determinism"): ["--checkpoint", "--count", "--json"],
    ("check", "gpu"): ["--images", "--json", "--checkpoint", "--device", "--limit", "--repeat", "--budget-s",
                       "--no-build", "--include-cpu"],
    ("check", "fuzz"): ["--count", "--seed", "--memory-cap", "--max-pixels", "--timeout", "--json", "--results",
                        "--progress"],
    ("bench", "entropy-params"): ["--checkpoint", "--N", "--M", "--size", "--threads", "--repeats",
                                  "--calibration", "--images", "--json"],
    ("bench", "serving"): ["--images", "--count", "--json", "--markdown"],
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_help_lists_the_options(capsys: pytest.CaptureFixture[str], command: tuple[str, ...]) -> None:
    code, out, err = run(capsys, *command, "--help")
    assert code == 0 and err == ""
    assert f"ckbd {' '.join(command)}" in out
    for option in COMMANDS[command]:
        assert option in out


def test_roundtrip_on_the_test_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "rt.json"
    code, out, _ = run(capsys, "-q", "check", "roundtrip", str(DATA), "--json", str(out_json))
    assert code == 0
    summary = json.loads(out)
    assert summary["images"] == len(list(DATA.glob("*.png"))) and summary["all_latents_identical"]
    report = json.loads(out_json.read_text())
    assert all(row["latents_identical"] and row["bytes"] > row["estimated_bytes"] > 0 for row in report["files"])


def test_roundtrip_of_a_folder_without_images_is_one_line(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", "roundtrip", str(tmp_path))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: no images") and "Traceback" not in err


def test_roundtrip_refuses_an_unwritable_json_before_any_work(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", "roundtrip", str(DATA), "--json", str(tmp_path / "none" / "x.json"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_fuzz_failures_exit_1_after_the_report(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from ckbd.tools.check import fuzz as fuzz_streams

    hang = {"i": 0, "kind": "truncate", "outcome": "hang", "error": "no answer"}
    monkeypatch.setattr(fuzz_streams, "run", lambda config, on_progress=None: fuzz_streams.summarize(
        [hang], config, 1.0))
    code, out, err = run(capsys, "check", "fuzz", "--count", "1", "--json", str(tmp_path / "f.json"))
    assert code == 1
    assert "case 0 (truncate): hang no answer" in out
    assert err.strip() == "error: 1 of 1 cases failed (wrong image, traceback or hang)"
    assert json.loads((tmp_path / "f.json").read_text())["totals"] == {"hang": 1}


def test_entropy_params_size_is_checked_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", "entropy-params", "--size", "512by768")
    assert code == 2 and err.count("\n") == 1 and "HxW" in err


def test_serving_benchmark_without_the_serve_extra_is_one_line(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if the serve extra were not installed
    code, out, err = run(capsys, "bench", "serving", "--images", str(DATA), "--count", "1")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "pip install '.[serve]'" in err
