"""``ckbd check gpu`` on CPU backends: every part end to end with --include-cpu, and each part's verdicts.

A flipped scale index is a column, not a crash; symbols that differ between directions fail the
interop part; no CUDA device is one line before any work.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import rgb_array
from PIL import Image

from ckbd.runtime.backend import Runner, Tensor, to_host
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.profiling import DECODE_STAGES
from ckbd.runtime.stages import ANCHOR_PARAMS, INDEX_STAGES, LATENT_SYNTHESIS, NONANCHOR_PARAMS
from ckbd.tools.check.gpu import backends, targets
from ckbd.tools.check.gpu.compare import Reference, Target, make_reference
from ckbd.tools.check.gpu.interop import run_interop
from ckbd.tools.check.gpu.latency import Size
from ckbd.tools.check.gpu.run import GpuCheckReport

SIZES = ((64, 96), (80, 64))
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def references() -> list[Reference]:
    encoder, decoder = Encoder.open(), Decoder.open()
    return [
        make_reference(f"img{i}.png", rgb_array(h, w, seed=i), encoder, decoder)
        for i, (h, w) in enumerate(SIZES)
    ]


class FlipOneIndex:
    """anchor_params with one scale index moved to its neighbour table, as a wrong kernel would."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        out = dict(self.inner.run(feeds, keep))
        indexes = to_host(out["anchor_indexes"]).copy()
        indexes[0, 0, 0, 0] += 1 if indexes[0, 0, 0, 0] == 0 else -1
        out["anchor_indexes"] = indexes
        return out

    def close(self) -> None:
        self.inner.close()


def _flipped_decoder() -> Decoder:
    decoder = Decoder.open()
    decoder.model.runners[ANCHOR_PARAMS] = FlipOneIndex(decoder.model.runners[ANCHOR_PARAMS])
    return decoder


def _cpu_target(label: str, flip: bool = False) -> Target:
    def open_() -> tuple[Any, Any]:
        return (_flipped_decoder() if flip else Decoder.open()), lambda: None

    return Target(label, open_, gpu=False)


def _unusable() -> tuple[Any, Any]:
    raise RuntimeError("no CUDA device\nsecond line")


def test_index_flip_is_reported_per_column(references: list[Reference]) -> None:
    targets_ = [_cpu_target("same"), _cpu_target("flipped", flip=True), Target("broken", _unusable)]
    same, flipped, broken = backends.run_targets(targets_, references, repeat=1, budget_s=300)

    assert same.decoded == len(references) and same.passed(exact=True)
    assert all(o.identical_to_cpu for o in same.outcomes)
    assert same.flips(ANCHOR_PARAMS) == 0 and same.flips(NONANCHOR_PARAMS) == 0

    # One flip per image, attributed to anchor_params alone; the decode fails as a corrupt stream.
    assert flipped.flips(ANCHOR_PARAMS) == len(references)
    assert flipped.flips(NONANCHOR_PARAMS) == 0
    assert flipped.decoded == 0 and not flipped.passed(exact=False)
    assert all(o.error.startswith("BitstreamError: ") for o in flipped.outcomes)

    assert broken.error == "RuntimeError: no CUDA device" and not broken.outcomes

    table = backends.summary_table([same, flipped, broken])
    row = next(line for line in table.splitlines() if line.strip().startswith("flipped"))
    assert f"0/{len(references)}" in row and "BitstreamError" in row
    assert "not opened: RuntimeError: no CUDA device" in table
    report = json.loads(json.dumps([r.to_dict() for r in (same, flipped, broken)]))
    assert report[1]["index_flips"][ANCHOR_PARAMS] == len(references)
    assert report[0]["images"][0]["psnr_vs_cpu"] is None  # identical: no infinity in the JSON


def test_torch_target_decodes_the_cpu_streams(references: list[Reference]) -> None:
    pytest.importorskip("torch", reason="torch is not installed (the export extra)")
    from ckbd.runtime.package import default_model_dir

    model_dir = default_model_dir()
    checkpoint = targets.known_checkpoint(model_dir)
    assert checkpoint is not None
    (result,) = backends.run_targets([targets.torch_target(model_dir, checkpoint, "cpu")], references, 1, 300)
    assert result.label == "torch-cpu" and not result.error
    assert result.decoded == len(references) and not result.stage_errors()
    assert set(result.routing.values()) == {"torch:cpu"}

    other = targets.torch_target(DATA / "no model", checkpoint, "cpu")
    (missing,) = backends.run_targets([other], references, 1, 300)
    assert missing.error.startswith("ModelError") and not missing.outcomes


def test_time_budget_skips_images_but_runs_one(references: list[Reference]) -> None:
    (result,) = backends.run_targets([_cpu_target("late")], references, repeat=1, budget_s=0)
    assert len(result.outcomes) == 1 and result.skipped == len(references) - 1
    assert "1 skipped (time budget)" in backends.summary_table([result])


def test_interop_fails_on_a_symbol_mismatch_in_one_direction(references: list[Reference]) -> None:
    """A device decoder that flips an index: cpu_to_device fails per image; the other direction passes."""
    ticks: list[str] = []
    with Decoder.open() as cpu, Encoder.open() as encoder, _flipped_decoder() as bad:
        part = run_interop(references, cpu, encoder, bad, deadline=float("inf"), tick=ticks.append)
        late = run_interop(references, cpu, encoder, cpu, deadline=0.0, tick=ticks.append)
    n = len(references)
    assert part["symbols_identical"] == {"cpu_to_device": 0, "device_to_cpu": n} and part["ok"] is False
    assert all(i["cpu_to_device"]["error"].startswith("BitstreamError") for i in part["images"])
    assert part["streams_identical_bytes"] == n  # the same encoder: the same bytes
    assert len(ticks) == n + 1
    assert late["images_run"] == 1 and late["images_skipped"] == n - 1 and late["ok"] is True


def test_report_fails_on_a_failed_part_or_a_required_part_not_run() -> None:
    ran = {"skipped": None, "ok": True}
    report = GpuCheckReport("cpu", {}, {}, {"compressai": {"skipped": "not installed"}, "latency": ran,
                                            "known_answers": ran, "interop": ran})
    assert report.ok and report.failure() == ""
    report.parts["interop"] = {"skipped": None, "ok": False}
    report.parts["throughput"] = {"skipped": None, "ok": False, "error": "RuntimeError: boom"}
    assert report.failed() == ["interop", "throughput"] and not report.ok
    assert report.failure() == "failed: interop (see the report); throughput (RuntimeError: boom)"
    assert report.to_dict()["failed"] == ["interop", "throughput"]
    del report.parts["interop"], report.parts["throughput"]
    report.parts["known_answers"] = {"skipped": "no vectors"}
    assert report.failure() == "failed: known_answers (skipped: no vectors); interop (skipped: not run)"


@pytest.mark.parametrize("text", ["768", "0x5", "x", "12xa"])
def test_size_parse_refuses_malformed_sizes(text: str) -> None:
    assert Size.parse("1920x1080") == Size(1920, 1080) and str(Size(768, 512)) == "768x512"
    with pytest.raises(ValueError, match="is not a size"):
        Size.parse(text)


def test_no_cuda_device_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the export extra)")
    from ckbd.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # wherever the test runs
    report = tmp_path / "r.json"
    for device in ([], ["--device", "cuda"], ["--device", "cuda:1"]):
        assert main(["check", "gpu", "--images", str(DATA), "--json", str(report), *device]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: device cuda") and "CUDA" in err
    assert not report.exists()
    assert main(["check", "gpu", "--json", str(report), "--sizes", "768"]) == 2  # a usage error
    assert "is not a size" in capsys.readouterr().err


def test_missing_image_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch", reason="torch is not installed (the export extra)")
    from ckbd.cli.main import main

    argv = ["check", "gpu", "--include-cpu", "--images", str(tmp_path / "none"), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "r.json").exists()


def _assert_positive_times(row: dict[str, Any]) -> None:
    assert row["decode_ms"] > 0 and set(row["stages_ms"]) == set(DECODE_STAGES)
    assert all(ms > 0 for ms in row["stages_ms"].values())
    assert row["decode_ms"] >= row["stages_ms"][LATENT_SYNTHESIS]


def test_include_cpu_runs_every_part_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole check on the CPU: tiny images, one small size, a tiny 'paper-size' model."""
    pytest.importorskip("torch", reason="torch is not installed (the export extra)")
    from ckbd.cli.main import main
    from ckbd.tools.bench.codecs.compressai_reference import load_compressai

    images = tmp_path / "images"
    images.mkdir()
    for name in ("kodim08_crop.png", "kodim23_crop.png"):
        shutil.copy(DATA / name, images / name)
    report_path = tmp_path / "report.json"
    argv = ["check", "gpu", "--include-cpu", "--images", str(images), "--json", str(report_path), "--repeat", "1",
            "--sizes", "64x48", "--precisions", "fp32,fp16", "--paper-size", "16,24"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "latency (wall clock per stage" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["failed"] == [] and report["device"] == "cpu"
    assert report["inputs"]["names"] == ["kodim08_crop.png", "kodim23_crop.png"]
    assert report["inputs"]["models"]["paper"]["N"] == 16 and report["inputs"]["models"]["paper"]["M"] == 24
    assert report["inputs"]["models"]["shipped"]["entropy_params"] == "integer"

    runs = {(r["backend"], r["device"]): r for r in report["known_answers"]["runs"]}
    assert set(runs) == {("onnxruntime", "cpu"), ("torch", "cpu")}
    for run in runs.values():
        assert run["ok"] and [s["stage"] for s in run["stages"]] == list(INDEX_STAGES)
        assert all(s["elements"] > 0 and s["mismatches"] == 0 for s in run["stages"])

    interop = report["interop"]
    assert interop["images_run"] == 2 and interop["symbols_identical"] == {"cpu_to_device": 2, "device_to_cpu": 2}
    assert all(i["cpu_to_device"]["symbols_identical"] and i["device_to_cpu"]["symbols_identical"]
               for i in interop["images"])

    latency = report["latency"]
    assert latency["timer"] == "wall clock" and latency["not_measured"] == []
    cells = {(r["model"], r["size"], r["precision"]): r for r in latency["rows"]}
    assert set(cells) == {(m, "64x48", p) for m in ("shipped", "paper") for p in ("fp32", "fp16")}
    for (_, _, precision), row in cells.items():
        _assert_positive_times(row)
        assert row["symbols_identical"] is True and set(row["routing"].values()) == {"torch:cpu"}
        assert ("psnr_vs_fp32_db" in row) == ("psnr_change_db" in row) == (precision == "fp16")

    rows = {r["model"]: r for r in report["throughput"]["rows"]}
    assert set(rows) == {"shipped", "paper"}
    assert all(r["images"] == 2 and r["sequential_images_per_s"] > 0 and r["pipelined_images_per_s"] > 0
               for r in rows.values())

    if load_compressai()[0] is None:
        assert "CompressAI is not installed" in report["compressai"]["skipped"]
    else:
        assert all(r["decode_ms"] > 0 and r["ratio_ckbd_over_compressai"] > 0 for r in report["compressai"]["rows"])

    checked = {b["backend"]: b for b in report["backends"]["backends"]}
    assert {"onnxruntime-cpu", "torch-cpu"} <= set(checked) and report["backends"]["ok"] is True
    assert all(b["images_decoded"] == 2 and not any(b["index_flips"].values()) for b in checked.values())


def test_sections_are_skipped_with_a_reason_when_the_budget_is_spent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Budget 0: the CPU references are made, every part after them says why it did not run, and the
    check fails: its required parts did not run."""
    pytest.importorskip("torch", reason="torch is not installed (the export extra)")
    from ckbd.cli.main import main

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array(48, 64, seed=3)).save(images / "a.png")
    report_path = tmp_path / "report.json"
    argv = ["check", "gpu", "--include-cpu", "--images", str(images), "--json", str(report_path),
            "--budget-s", "0", "--paper-size", "none"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    error = captured.err.splitlines()[-1]  # after the progress line
    assert error.startswith("error: GPU check failed: known_answers (skipped: time budget spent")
    report = json.loads(report_path.read_text())
    assert report["failed"] == ["known_answers", "interop"]
    for part in ("known_answers", "interop", "latency", "compressai", "throughput", "backends"):
        assert report[part]["skipped"].startswith("time budget spent"), part
    assert report["inputs"]["models"]["paper"] == {"skipped": "--paper-size none"}
    assert "interop: skipped: time budget spent" in captured.out
    assert np.isfinite(report["seconds"])
