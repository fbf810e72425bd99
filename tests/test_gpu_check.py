"""The GPU check's comparison on CPU backends: a flipped scale index is a column, not a crash."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import rgb_array
from PIL import Image

from ckbd.runtime.backend import Runner, Tensor, to_host
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.stages import ANCHOR_PARAMS, NONANCHOR_PARAMS
from ckbd.tools import gpu_check, gpu_targets
from ckbd.tools.gpu_compare import Reference, Target, make_reference

SIZES = ((64, 96), (80, 64))


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


def _cpu_target(label: str, flip: bool = False) -> Target:
    def open_() -> tuple[Any, Any]:
        decoder = Decoder.open()
        if flip:
            decoder.model.runners[ANCHOR_PARAMS] = FlipOneIndex(decoder.model.runners[ANCHOR_PARAMS])
        return decoder, lambda: None

    return Target(label, open_, gpu=False)


def _unusable() -> tuple[Any, Any]:
    raise RuntimeError("no CUDA device\nsecond line")


def test_index_flip_is_reported_per_column(references: list[Reference]) -> None:
    targets = [_cpu_target("same"), _cpu_target("flipped", flip=True), Target("broken", _unusable)]
    same, flipped, broken = gpu_check.run_targets(targets, references, repeat=1, budget_s=300)

    assert same.decoded == len(references) and same.passed(exact=True)
    assert all(o.identical_to_cpu for o in same.outcomes)
    assert same.flips(ANCHOR_PARAMS) == 0 and same.flips(NONANCHOR_PARAMS) == 0

    # One flip per image, attributed to anchor_params alone; the decode fails as a corrupt stream.
    assert flipped.flips(ANCHOR_PARAMS) == len(references)
    assert flipped.flips(NONANCHOR_PARAMS) == 0
    assert flipped.decoded == 0 and not flipped.passed(exact=False)
    assert all(o.error.startswith("BitstreamError: ") for o in flipped.outcomes)

    assert broken.error == "RuntimeError: no CUDA device" and not broken.outcomes

    table = gpu_check.summary_table([same, flipped, broken])
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
    checkpoint = gpu_targets.known_checkpoint(model_dir)
    assert checkpoint is not None
    (result,) = gpu_check.run_targets([gpu_targets.torch_target(model_dir, checkpoint, "cpu")], references, 1, 300)
    assert result.label == "torch-cpu" and not result.error
    assert result.decoded == len(references) and not result.stage_errors()
    assert set(result.routing.values()) == {"torch:cpu"}

    other = gpu_targets.torch_target(Path(__file__).parent / "data" / "no model", checkpoint, "cpu")
    (missing,) = gpu_check.run_targets([other], references, 1, 300)
    assert missing.error.startswith("ModelError") and not missing.outcomes


def test_time_budget_skips_images_but_runs_one(references: list[Reference]) -> None:
    (result,) = gpu_check.run_targets([_cpu_target("late")], references, repeat=1, budget_s=0)
    assert len(result.outcomes) == 1 and result.skipped == len(references) - 1
    assert "1 skipped (time budget)" in gpu_check.summary_table([result])


def test_check_without_gpu_backends_fails_but_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ckbd check gpu``: exit 1 with one line when no GPU backend is found; the report is written anyway."""
    from ckbd.cli.main import main

    monkeypatch.setattr(gpu_targets, "known_checkpoint", lambda model_dir: None)  # no torch target
    for module in (gpu_targets, gpu_check):  # a machine without any GPU backend, wherever this runs
        monkeypatch.setattr(module, "tensorrt_missing", lambda: "not installed")
    monkeypatch.setattr(gpu_targets, "ort_cuda_missing", lambda: "no CUDA provider")
    monkeypatch.setattr(gpu_targets, "torch_cuda_missing", lambda: "no CUDA device")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array(64, 64, seed=3)).save(images / "a.png")
    report = tmp_path / "report.json"
    argv = ["check", "gpu", "--images", str(images), "--json", str(report), "--repeat", "1"]

    assert main(argv) == 1  # no GPU backend: the check cannot pass
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: GPU check failed: no GPU backend found")
    data = json.loads(report.read_text())
    assert {"tensorrt", "onnxruntime-cuda", "torch-cuda"} <= set(data["not_checked"])
    assert data["backends"] == [] and data["ok"] is False

    assert main([*argv, "--include-cpu"]) == 0
    data = json.loads(report.read_text())
    (cpu,) = data["backends"]
    assert cpu["backend"] == "onnxruntime-cpu" and cpu["images_decoded"] == 1
    assert set(cpu["routing"].values()) == {"onnxruntime:cpu"}
    assert np.isfinite(cpu["median_ms"]["decode"])
    assert "all checks passed" in capsys.readouterr().out


def test_missing_image_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ckbd.cli.main import main

    assert main(["check", "gpu", "--images", str(tmp_path / "none"), "--json", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "r.json").exists()
