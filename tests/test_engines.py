"""TensorRT engine tooling: everything that can be checked without TensorRT or a GPU.

Metadata and its mismatch messages, size profiles and per-stage shapes, the precision policy, the
``ckbd build`` command and lazy imports. The buffer layer and the runner on fakes are in
test_trt_runner.py. What needs the real thing skips with its reason.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from engine_fixtures import M, N, engine_metadata, fake_model_dir
from typer.testing import CliRunner

from ckbd.engines.builder import BuildOptions, build_engines
from ckbd.engines.metadata import (
    Expected,
    check_compatible,
    engine_path,
    mismatches,
    missing_engine_error,
    read_metadata,
    rebuild_command,
    sidecar_path,
    write_metadata,
)
from ckbd.engines.policy import allows_tf32, available_precisions, exported_stages, stage_precision
from ckbd.engines.profiles import SizeProfile, stage_input_shapes, stage_profile_shapes
from ckbd.errors import CkbdError, MissingDependencyError, ModelError, ModelMismatchError, UsageError
from ckbd.runtime.image_size import ImageSize, parse_size
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.stages import (
    ALL_STAGES,
    ANALYSIS,
    ANCHOR_PARAMS,
    HYPER_SYNTHESIS,
    LATENT_SYNTHESIS,
    NONANCHOR_PARAMS,
    resolve_dim,
)

NO_TENSORRT = "TensorRT is not installed (cannot be installed on this workplace)"


def _has_real_tensorrt() -> bool:
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return False
    return hasattr(module, "Builder")  # tensorrt-stubs alone imports as an empty namespace


HAS_TENSORRT = _has_real_tensorrt()
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return fake_model_dir(tmp_path)


def _expected(**changes: Any) -> Expected:
    fields: dict[str, Any] = dict(
        stage=LATENT_SYNTHESIS,
        precision="fp16",
        tensorrt_version="10.13.0.35",
        compute_capability="9.0",
        source_sha256="1" * 64,
        engine_sha256="2" * 64,
    )
    fields.update(changes)
    return Expected(**fields)


# --- metadata --------------------------------------------------------------------------------


def test_metadata_round_trip(tmp_path: Path) -> None:
    engine = engine_path(tmp_path, LATENT_SYNTHESIS, "fp16")
    assert engine == tmp_path / "engines" / "latent_synthesis.fp16.engine"
    assert sidecar_path(engine).name == "latent_synthesis.fp16.json"
    engine.parent.mkdir()
    meta = engine_metadata(forced_precision=True, extra={"note": "x"})
    write_metadata(engine, meta)
    assert read_metadata(engine) == meta
    assert json.loads(sidecar_path(engine).read_text())["compute_capability"] == "9.0"


def test_metadata_unreadable_is_a_model_error(tmp_path: Path) -> None:
    engine = tmp_path / "x.fp32.engine"
    with pytest.raises(ModelError):
        read_metadata(engine)
    sidecar_path(engine).write_text('{"stage": "x"}')
    with pytest.raises(ModelError, match="cannot read engine metadata"):
        read_metadata(engine)
    sidecar_path(engine).write_text(engine_metadata(format_version=99).to_json())
    with pytest.raises(ModelError, match="format 99"):
        read_metadata(engine)


def test_matching_metadata_passes() -> None:
    assert mismatches(engine_metadata(), _expected()) == []
    check_compatible(engine_metadata(), _expected(), Path("m"), Path("m/engines/e"))


@pytest.mark.parametrize(
    ("expected", "reason"),
    [
        (
            _expected(tensorrt_version="11.0.0.1"),
            "built with TensorRT 10.13.0.35, running TensorRT 11.0.0.1",
        ),
        (
            _expected(compute_capability="8.9"),
            "compute capability 9.0 (NVIDIA H100 80GB HBM3), this GPU has 8.9",
        ),
        (_expected(source_sha256="3" * 64), "the model was re-exported"),
        (_expected(engine_sha256="4" * 64), "does not match its metadata"),
        (_expected(stage=ANCHOR_PARAMS), "not anchor_params/fp16"),
    ],
)
def test_mismatch_names_reason_and_rebuild_command(expected: Expected, reason: str) -> None:
    model_dir = Path("/models/my model")
    with pytest.raises(ModelMismatchError) as info:
        check_compatible(engine_metadata(), expected, model_dir, Path("/models/my model/engines/e"))
    message = str(info.value)
    assert reason in message
    assert (
        "Rebuild it with: ckbd build '/models/my model' --precision fp16 "
        "--min-size 64x64 --opt-size 512x768 --max-size 2048x2048"
    ) in message


def test_all_mismatches_are_reported_together() -> None:
    reasons = mismatches(engine_metadata(), _expected(tensorrt_version="11.1", compute_capability="10.0"))
    assert len(reasons) == 2


def test_rebuild_command() -> None:
    assert rebuild_command(Path("m"), "int8") == "ckbd build m --precision int8"
    forced = rebuild_command(
        Path("m"), "fp16", SizeProfile.parse("64x64", "64x64", "128x128").to_dict(), True
    )
    assert forced == (
        "ckbd build m --precision fp16 --min-size 64x64 --opt-size 64x64 --max-size 128x128 "
        "--force-precision"
    )


def test_missing_engine_error_names_the_build_command(tmp_path: Path) -> None:
    error = missing_engine_error(tmp_path, HYPER_SYNTHESIS, "fp32")
    assert isinstance(error, ModelError)
    assert f"ckbd build {tmp_path} --precision fp32" in str(error)
    assert "hyper_synthesis.fp32.engine" in str(error)


# --- sizes, profiles, per-stage shapes -------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("512x768") == ImageSize(512, 768)
    assert parse_size(" 64 X 128 ") == ImageSize(64, 128)
    assert str(ImageSize(512, 768)) == "512x768"
    for bad in ("512", "512x", "x768", "512*768", "-64x64", "0x64", "axb"):
        with pytest.raises(CkbdError):
            parse_size(bad)


def test_sizes_are_padded_to_64() -> None:
    assert ImageSize(500, 700).padded() == ImageSize(512, 704)
    profile = SizeProfile.parse("1x1", "500x700", "1080x1920")
    assert (profile.min, profile.opt, profile.max) == (
        ImageSize(64, 64),
        ImageSize(512, 704),
        ImageSize(1088, 1920),
    )
    assert profile.to_dict() == {"min": [64, 64], "opt": [512, 704], "max": [1088, 1920]}


def test_profile_must_be_ordered_per_dimension() -> None:
    with pytest.raises(CkbdError, match="min <= opt <= max in width"):
        SizeProfile.parse("64x64", "512x768", "1024x512")
    with pytest.raises(CkbdError, match="in height"):
        SizeProfile.parse("1024x64", "512x768", "2048x2048")


def test_stage_input_shapes_512x768() -> None:
    size = parse_size("512x768")  # h = 32, w = 48
    assert stage_input_shapes(ANALYSIS, size, M, N) == {"image": (1, 3, 512, 768)}
    assert stage_input_shapes(HYPER_SYNTHESIS, size, M, N) == {"z_symbols": (1, N, 8, 12)}
    assert stage_input_shapes(ANCHOR_PARAMS, size, M, N) == {"hyper": (1, 2 * M, 32, 48)}
    assert stage_input_shapes(NONANCHOR_PARAMS, size, M, N) == {
        "hyper": (1, 2 * M, 32, 48),
        "anchor_hat": (1, M, 32, 24),
    }
    assert stage_input_shapes(LATENT_SYNTHESIS, size, M, N) == {
        "anchor_hat": (1, M, 32, 24),
        "nonanchor_hat": (1, M, 32, 24),
    }


def test_unpadded_size_is_padded_before_conversion() -> None:
    assert stage_input_shapes(LATENT_SYNTHESIS, parse_size("500x700"), M, N)["anchor_hat"] == (
        1,
        M,
        32,
        22,
    )


def test_stage_profile_shapes() -> None:
    profile = SizeProfile.parse("64x64", "512x768", "2048x2048")
    shapes = stage_profile_shapes(HYPER_SYNTHESIS, profile, M, N)
    assert shapes == {"z_symbols": ((1, N, 1, 1), (1, N, 8, 12), (1, N, 32, 32))}
    latent = stage_profile_shapes(LATENT_SYNTHESIS, profile, M, N)
    assert latent["nonanchor_hat"] == ((1, M, 4, 2), (1, M, 32, 24), (1, M, 128, 64))


def test_resolve_dim() -> None:
    values = {"H": 512, "W": 768, "h": 32, "w": 48, "M": 192, "N": 128}
    assert [resolve_dim(d, values) for d in (1, "2M", "w/2", "h/4", "W")] == [1, 384, 24, 8, 768]
    with pytest.raises(CkbdError):
        resolve_dim("K", values)
    with pytest.raises(CkbdError, match="not whole"):
        resolve_dim("w/5", values)
    with pytest.raises(CkbdError, match="unknown stage"):
        stage_input_shapes("entropy", parse_size("64x64"), M, N)


# --- precision policy ------------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["fp32", "fp16", "int8"])
def test_index_stages_stay_fp32(requested: str) -> None:
    for stage in (ANALYSIS, HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS):
        assert stage_precision(stage, requested) == "fp32"
        assert stage_precision(stage, requested, force=True) == requested
    assert stage_precision(LATENT_SYNTHESIS, requested) == requested


def test_precision_policy_rejects_unknown_and_limits_tf32() -> None:
    with pytest.raises(CkbdError, match="unknown precision"):
        stage_precision(LATENT_SYNTHESIS, "bf16")
    assert allows_tf32(LATENT_SYNTHESIS)
    assert not any(
        allows_tf32(s) for s in (ANALYSIS, HYPER_SYNTHESIS, ANCHOR_PARAMS, NONANCHOR_PARAMS)
    )


def test_available_precisions_and_stages(model_dir: Path) -> None:
    manifest = Manifest.load(model_dir)
    assert available_precisions(manifest) == ("fp32", "fp16")
    assert exported_stages(manifest) == ALL_STAGES


def test_build_without_variant_fails_before_tensorrt(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="no int8 graph of 'latent_synthesis'"):
        build_engines(model_dir, BuildOptions(precision="int8"), progress=lambda _: None)


@needs_no_tensorrt
def test_build_without_tensorrt_names_the_extra(model_dir: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install '.*\[gpu\]'"):
        build_engines(model_dir, BuildOptions(precision="fp16"), progress=lambda _: None)
    assert not (model_dir / "engines").exists()


# --- CLI -------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    """``ckbd`` with only the build command, so other command modules cannot affect these tests."""
    from ckbd.cli import build

    app = typer.Typer(add_completion=False)

    @app.callback()
    def _root() -> None:
        """Force a command group (a lone command would become the app itself)."""

    build.register(app)
    return app


def _invoke(args: list[str]) -> tuple[int, str]:
    """Run like ``ckbd.cli.main.run``: a CkbdError becomes its message and exit code 1 (2 for usage)."""
    result = CliRunner().invoke(_cli(), args)
    if isinstance(result.exception, CkbdError):
        return 2 if isinstance(result.exception, UsageError) else 1, f"error: {result.exception}"
    return result.exit_code, result.output


def test_build_help() -> None:
    code, output = _invoke(["build", "--help"])
    assert code == 0
    for option in (
        "--precision",
        "--min-size",
        "--opt-size",
        "--max-size",
        "--workspace",
        "--timing-cache",
    ):
        assert option in output


def test_build_rejects_bad_sizes(model_dir: Path) -> None:
    code, output = _invoke(["build", str(model_dir), "--max-size", "huge"])
    assert code == 2 and "not HxW" in output
    code, output = _invoke(["build", str(model_dir), "--precision", "fp64"])
    assert code == 2  # click's usage error


@needs_no_tensorrt
def test_build_command_without_tensorrt(model_dir: Path) -> None:
    code, output = _invoke(
        ["build", str(model_dir), "--precision", "fp16", "--opt-size", "512x768"]
    )
    assert code == 1
    assert "[gpu]'" in output and "pip install" in output


@needs_no_tensorrt
def test_installed_entry_point_without_tensorrt(model_dir: Path) -> None:
    """The real ``ckbd`` entry point: build is registered and a missing extra exits 1."""
    command = [sys.executable, "-m", "ckbd", "build", str(model_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "[gpu]'" in result.stderr and "pip install" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_the_backend_imports_no_gpu_package() -> None:
    code = (
        "import sys, ckbd.engines.trt_backend, ckbd.engines.builder, ckbd.cli.build;"
        "loaded = [m for m in ('tensorrt', 'cuda', 'pycuda') if m in sys.modules];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_no_tensorrt
def test_backend_without_tensorrt_names_the_extra() -> None:
    from ckbd.engines.trt_backend import TensorRTBackend
    from ckbd.runtime.backend import create_backend

    with pytest.raises(MissingDependencyError) as info:
        TensorRTBackend()
    assert info.value.extra == "gpu"
    with pytest.raises(MissingDependencyError):
        create_backend("tensorrt", precision="fp16")


# --- needs TensorRT and a GPU ----------------------------------------------------------------


@needs_tensorrt
def test_tensorrt_reports_its_version() -> None:
    from ckbd.engines import tensorrt_version

    assert tensorrt_version().split(".")[0] in ("10", "11")
