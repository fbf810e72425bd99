"""Known-answer vectors: written by the exporter, verified with the package, checked on demand
(``ckbd check known-answers``) and at load by every runner but ONNX Runtime's CPU provider."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from conftest import rgb_array, tiny_model
from gpu_fakes import FakeCuda, fake_cuda_onnxruntime, patch_tensorrt

from ckbd import progress
from ckbd.cli.main import main
from ckbd.export.integer_quantize import quantize_model
from ckbd.export.onnx_export import export_model
from ckbd.models.checkpoint import save_checkpoint
from ckbd.runtime.entropy_tables import default_scale_table
from ckbd.runtime.intparams import Z_LIMIT
from ckbd.runtime.known_answers import KNOWN_ANSWERS_NAME, KnownAnswers
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.ort_backend import CPU_PROVIDER, CUDA_PROVIDER, OnnxRuntimeBackend, OrtRunner
from ckbd.runtime.package import ModelPackage, default_model_dir
from ckbd.runtime.self_check import guard_integer_runner, verdicts_path
from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS, INDEX_STAGES, LATENT_SYNTHESIS

GPU = {"gpu": "Fake GPU", "compute_capability": "9.0", "cuda_driver": "12080"}


@pytest.fixture(autouse=True)
def _private_cache_and_notices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(progress._settings, "quiet", False)  # an earlier `ckbd -q` must not hide notices


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, checkpoint) of a tiny integer-path export (index stages only)."""
    root = tmp_path_factory.mktemp("small")
    model = tiny_model("mbt2018-ckbd")
    save_checkpoint(root / "model.pt", model)
    spec = quantize_model(model, [rgb_array(128, 128, seed=s) for s in range(2)], default_scale_table())
    export_model(model, root / "model", stages=(*INDEX_STAGES, LATENT_SYNTHESIS), integer_params=spec)
    return root / "model", root / "model.pt"


# --- the file: written, listed, verified ---------------------------------------------------------


def test_shipped_vectors_are_small_listed_and_saturating() -> None:
    package = ModelPackage.open()
    path = package.known_answers_path()
    assert path is not None and path.name == KNOWN_ANSWERS_NAME
    assert path.stat().st_size < 300_000
    answers = KnownAnswers.load(path)
    assert {"photo 0", "photo 1", "saturating z", "saturating hyper"} <= set(answers.cases)
    assert np.abs(answers.cases["saturating z"]["z_symbols"]).max() == 2**31 - 1
    assert (np.abs(answers.cases["saturating z"]["z_symbols"]) == Z_LIMIT).any()
    bound = package.integer_params.hyper[-1].bound  # type: ignore[union-attr]
    assert np.array_equal(np.abs(answers.cases["saturating hyper"]["hyper"]), np.full((1, 192, 4, 8), bound))
    assert [len(answers.vectors(stage)) for stage in INDEX_STAGES] == [3, 4, 4]
    again = KnownAnswers.load(path)
    assert again.to_bytes() == path.read_bytes()  # load and save are exact inverses


def test_export_default_rewrites_the_shipped_vectors_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "default"
    assert main(["-q", "export", "--default", "-o", str(out), "--stages", ANCHOR_PARAMS]) == 0
    shipped = default_model_dir()
    assert (out / KNOWN_ANSWERS_NAME).read_bytes() == (shipped / KNOWN_ANSWERS_NAME).read_bytes()
    assert Manifest.load(out).known_answers == Manifest.load(shipped).known_answers


def test_cli_export_writes_vectors_of_its_calibration_photos(small: tuple[Path, Path], tmp_path: Path) -> None:
    from ckbd.export.known_answers import generate, photos_from
    from ckbd.models.checkpoint import load_model

    photos = Path(__file__).parent / "data"
    out = tmp_path / "m"
    assert main(["-q", "export", str(small[1]), "-o", str(out), "--stages", ANCHOR_PARAMS,
                 "--calibration-images", str(photos)]) == 0
    package = ModelPackage.open(out)
    expected = generate(load_model(small[1]), package.integer_params, photos_from(photos))  # type: ignore[arg-type]
    assert (out / KNOWN_ANSWERS_NAME).read_bytes() == expected.to_bytes()  # deterministic, from those photos


def test_tampered_vectors_fail_the_sha256_check(small: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = shutil.copytree(small[0], tmp_path / "m")
    data = bytearray((model_dir / KNOWN_ANSWERS_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (model_dir / KNOWN_ANSWERS_NAME).write_bytes(bytes(data))
    assert main(["check", "known-answers", str(model_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert "known_answers.npz does not match its sha256" in err and "\n" not in err


# --- ckbd check known-answers ------------------------------------------------------------------


def test_check_passes_for_onnxruntime_and_torch_on_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    for backend in ("onnxruntime", "torch"):
        assert main(["check", "known-answers", "--backend", backend]) == 0
        out = capsys.readouterr().out
        assert f"on {backend} (cpu)" in out
        for stage in INDEX_STAGES:
            assert f"{stage} " in out


def test_check_passes_on_a_small_export(small: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, checkpoint = small
    assert main(["check", "known-answers", str(model_dir)]) == 0
    assert main(["check", "known-answers", str(model_dir), "--backend", "torch", "--checkpoint", str(checkpoint)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith(INDEX_STAGES)]
    assert len(rows) == 6 and all(row[3] == "0" and int(row[2]) > 0 for row in rows)
    assert main(["check", "known-answers", str(model_dir), "--backend", "torch"]) == 2  # whose checkpoint? (usage)


class _Perturbing:
    """A backend wrapper whose ``stage`` runner returns one output value off by one."""

    name = "perturbing"

    def __init__(self, inner: Any, stage: str) -> None:
        self.inner, self.stage = inner, stage

    def load(self, package: ModelPackage, stage: str) -> Any:
        runner = self.inner.load(package, stage)
        return _OffByOne(runner) if stage == self.stage else runner

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _Perturbing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OffByOne:
    def __init__(self, runner: Any) -> None:
        self.runner, self.runs = runner, 0
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def run(self, feeds: Mapping[str, Any], keep: Collection[str] = ()) -> dict[str, Any]:
        self.runs += 1
        out = dict(self.runner.run(feeds))
        name = self.outputs[-1].name
        out[name] = out[name].copy()
        out[name].flat[3] += 0.5
        return out

    def close(self) -> None:
        self.runner.close()


def test_check_fails_naming_the_perturbed_stage(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import ckbd.tools.check.known_answers as tool

    real = tool.open_backend
    monkeypatch.setattr(tool, "open_backend", lambda *args: _Perturbing(real(*args), ANCHOR_PARAMS))
    assert main(["check", "known-answers"]) == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines() if line.strip().startswith(INDEX_STAGES)}
    assert rows[ANCHOR_PARAMS][3] == "4" and rows[ANCHOR_PARAMS][4] == "0.5"  # one value in each of 4 cases
    assert rows[HYPER_SYNTHESIS][3] == "0"
    assert "known-answer check failed for anchor_params" in captured.err


# --- the load-time guard -----------------------------------------------------------------------


def test_guard_keeps_a_matching_runner_and_replaces_a_differing_one(capsys: pytest.CaptureFixture[str]) -> None:
    package = ModelPackage.open()
    cpu = OnnxRuntimeBackend("cpu")
    fallback_runner = cpu.load(package, ANCHOR_PARAMS)
    exact = cpu.load(package, ANCHOR_PARAMS)
    kept = guard_integer_runner(exact, package, ANCHOR_PARAMS, device="fake:0", identity=None,
                                fallback=lambda: fallback_runner)
    assert kept is exact and capsys.readouterr().err == ""
    wrong = _OffByOne(cpu.load(package, ANCHOR_PARAMS))
    chosen = guard_integer_runner(wrong, package, ANCHOR_PARAMS, device="fake:0", identity=None,  # type: ignore[arg-type]
                                  fallback=lambda: fallback_runner)
    assert chosen is fallback_runner
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("notice: anchor_params on fake:0 gave 4 of 18432 known-answer values wrong")
    assert guard_integer_runner(wrong, package, LATENT_SYNTHESIS, device="fake:0", identity=None,  # type: ignore[arg-type]
                                fallback=lambda: fallback_runner) is wrong  # not an integer stage
    cpu.close()


def test_ort_cuda_runs_integer_stages_on_cuda_with_exact_options(
    small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = fake_cuda_onnxruntime(monkeypatch, identity=GPU)
    backend = OnnxRuntimeBackend("cuda:0")
    for stage in INDEX_STAGES:
        runner = backend.load(small[0], stage)
        assert runner.providers[0] == CUDA_PROVIDER
        (name, options), cpu = sessions.created[-1].requested
        assert (name, cpu) == (CUDA_PROVIDER, CPU_PROVIDER)
        assert options["cudnn_conv_algo_search"] == "DEFAULT" and options["use_tf32"] == "0"
    assert sessions.cuda_runs == 3 + 4 + 4  # every vector ran once
    assert capsys.readouterr().err == ""
    backend.close()


def test_ort_cuda_mismatch_falls_back_to_the_cpu_provider_with_a_notice(
    small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_cuda_onnxruntime(monkeypatch, perturb=(HYPER_SYNTHESIS,), identity=GPU)
    backend = OnnxRuntimeBackend("cuda")
    assert backend.load(small[0], HYPER_SYNTHESIS).providers == [CPU_PROVIDER]
    assert backend.load(small[0], ANCHOR_PARAMS).providers[0] == CUDA_PROVIDER
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("notice: hyper_synthesis on cuda:0 (Fake GPU) gave 3 of ")
    assert err[0].endswith("hyper_synthesis runs on ONNX Runtime's CPU provider instead of cuda:0 (Fake GPU)")
    backend.close()


def test_verdicts_are_cached_per_device_identity(small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = fake_cuda_onnxruntime(monkeypatch, identity=GPU)
    with OnnxRuntimeBackend("cuda") as backend:
        backend.load(small[0], ANCHOR_PARAMS)
    assert sessions.cuda_runs == 4 and verdicts_path().is_file()
    with OnnxRuntimeBackend("cuda") as backend:
        backend.load(small[0], ANCHOR_PARAMS)
    assert sessions.cuda_runs == 4  # the second load read the verdict
    monkeypatch.setattr("ckbd.runtime.ort_backend.cuda_identity", lambda device_id: {**GPU, "cuda_driver": "13000"})
    with OnnxRuntimeBackend("cuda") as backend:
        backend.load(small[0], ANCHOR_PARAMS)
    assert sessions.cuda_runs == 8  # another driver: checked again
    monkeypatch.setattr("ckbd.runtime.ort_backend.cuda_identity", lambda device_id: None)
    for _ in range(2):
        with OnnxRuntimeBackend("cuda") as backend:
            backend.load(small[0], ANCHOR_PARAMS)
    assert sessions.cuda_runs == 16  # a device that cannot be identified is checked at every load


def test_a_package_without_vectors_keeps_integer_stages_off_the_gpu(
    small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = shutil.copytree(small[0], tmp_path / "old")
    manifest = Manifest.load(old)
    manifest.known_answers = None  # an export from before the vectors
    manifest.save(old)
    fake_cuda_onnxruntime(monkeypatch, identity=GPU)
    with OnnxRuntimeBackend("cuda") as backend:
        assert backend.load(old, ANCHOR_PARAMS).providers == [CPU_PROVIDER]
        assert backend.load(old, LATENT_SYNTHESIS).providers[0] == CUDA_PROVIDER
    assert "has no known-answer vectors" in capsys.readouterr().err


def test_tensorrt_runs_integer_stages_through_ort_cuda_or_the_cpu(
    small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    sessions = fake_cuda_onnxruntime(monkeypatch, perturb=(ANCHOR_PARAMS,), identity=GPU)
    module = patch_tensorrt(monkeypatch, FakeCuda(), lambda data: None)
    with module.TensorRTBackend(device=0) as backend:
        runner = backend.load(small[0], HYPER_SYNTHESIS)
        assert isinstance(runner, OrtRunner) and runner.providers[0] == CUDA_PROVIDER
        assert backend.load(small[0], ANCHOR_PARAMS).providers == [CPU_PROVIDER]  # failed its check
    assert "anchor_params on cuda:0 (Fake GPU) gave 4 of" in capsys.readouterr().err
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU_PROVIDER])  # onnxruntime, not -gpu
    with module.TensorRTBackend(device=0) as backend:
        assert backend.load(small[0], HYPER_SYNTHESIS).providers == [CPU_PROVIDER]
    assert "has no CUDA provider" in capsys.readouterr().err
    assert sessions.created[-1].requested == [CPU_PROVIDER]


def test_torch_backend_checks_its_integer_stages_and_falls_back_to_the_cpu_provider(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The GEMM-form stages pass on the shipped model (kept, verdict cached); a stage whose kernel is
    off by one in one value per case is replaced by ONNX Runtime's CPU provider, with the notice."""
    from ckbd.export.torch_backend import TorchBackend, TorchRunner

    package = ModelPackage.open(default_model_dir())
    with TorchBackend() as backend:
        assert all(isinstance(backend.load(package, stage), TorchRunner) for stage in INDEX_STAGES)
    assert verdicts_path().is_file() and "notice:" not in capsys.readouterr().err

    real_run = TorchRunner.run

    def off_by_one(self: TorchRunner, feeds: Mapping[str, Any], keep: Collection[str] = ()) -> dict[str, Any]:
        out = real_run(self, feeds, keep)
        if self.stage == ANCHOR_PARAMS:
            means = np.array(out["anchor_means"], copy=True)
            means.flat[0] += 1.0
            out = {**out, "anchor_means": means}
        return out

    monkeypatch.setattr(TorchRunner, "run", off_by_one)
    verdicts_path().unlink()
    with TorchBackend() as backend:
        runners = {stage: backend.load(package, stage) for stage in INDEX_STAGES}
        assert isinstance(runners[ANCHOR_PARAMS], OrtRunner) and CPU_PROVIDER in runners[ANCHOR_PARAMS].providers
        assert isinstance(runners[HYPER_SYNTHESIS], TorchRunner)
    err = capsys.readouterr().err
    assert err.count("notice:") == 1 and "anchor_params on cpu gave 4 of" in err  # one value in each of 4 cases
