"""Export: ONNX graphs equal the torch reference; the model package, fingerprint and ``ckbd export``.

Models are tiny (N=32) and each configuration is exported once per module, so the whole file
stays well under a minute on one core. The optimised torch forms are in test_export_optimize.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_models import (
    CONFIGS,
    IMAGE_SIZES,
    TABLE,
    one_torch_thread,  # noqa: F401  (autouse: one torch thread in this module)
    rel_err,
    stage_inputs,
    tiny_model,
)

from ckbd.errors import CkbdError, ModelError
from ckbd.export.model_package import build_package, model_fingerprint
from ckbd.export.onnx_export import check_graph, export_model
from ckbd.export.torch_backend import TorchBackend, checkpoint_package
from ckbd.models import ModelConfig, build_model
from ckbd.models import checkerboard as cb
from ckbd.models.checkpoint import save_checkpoint
from ckbd.runtime.entropy_tables import EntropyTables
from ckbd.runtime.manifest import Manifest, file_sha256
from ckbd.runtime.stages import ALL_STAGES, STAGE_IO

# ---------------------------------------------------------------------------------------------
# ONNX graphs == torch reference


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, tuple]:
    """Each configuration exported once: {config: (model, manifest, model_dir)}."""
    out = {}
    for config in CONFIGS:
        model = tiny_model(*config)
        model_dir = tmp_path_factory.mktemp(f"{config[0]}-{config[3]}")
        out[config] = (model, export_model(model, model_dir), model_dir)
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _near_threshold(scales: np.ndarray) -> np.ndarray:
    """Whether each scale lies within 1e-5 (relative) of a table threshold."""
    thresholds = TABLE[:-1].astype(np.float64)
    distance = np.abs(scales.astype(np.float64)[..., None] - thresholds) / thresholds
    return distance.min(axis=-1) <= 1e-5


def _reference_scales(model: torch.nn.Module, stage: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    parity = model.config.anchor_parity
    hyper = torch.from_numpy(feeds["hyper"])
    with torch.inference_mode():
        if stage == "anchor_params":
            scales, _ = model.anchor_params(cb.pack(hyper, "anchor", parity))
        else:
            scales, _ = model.nonanchor_params(cb.pack(hyper, "nonanchor", parity),
                                               torch.from_numpy(feeds["anchor_hat"]))
    return scales.numpy()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[3]}")
def test_onnx_graphs_match_torch_reference(config: tuple, exported: dict, record_property) -> None:  # type: ignore[no-untyped-def]
    model, manifest, model_dir = exported[config]
    _, N, M, _ = config
    reference = TorchBackend(model)
    sessions = {stage: _session(manifest.graph_path(model_dir, stage)) for stage in ALL_STAGES}
    rng = np.random.default_rng(6)
    near_threshold_mismatches = 0
    for H, W in IMAGE_SIZES:  # two sizes through the same files: spatial dims stay dynamic
        hyper = None
        for stage in ALL_STAGES:
            feeds = stage_inputs(stage, N, M, H, W, rng, hyper)
            ref = reference.load(model_dir, stage).run(feeds)
            names = [o.name for o in sessions[stage].get_outputs()]
            got = dict(zip(names, sessions[stage].run(None, feeds)))
            assert names == [s.name for s in STAGE_IO[stage][1]]
            for spec in STAGE_IO[stage][1]:
                r, g = ref[spec.name], got[spec.name]
                assert r.shape == g.shape and r.dtype == g.dtype, (stage, spec.name, r.shape, g.shape)
                if spec.dtype == "float32":
                    assert rel_err(r, g) <= 1e-4, (stage, spec.name, H, W)
                elif spec.dtype == "uint8":
                    assert int(np.abs(r.astype(np.int16) - g).max()) <= 1, (stage, H, W)
                elif spec.name == "z_symbols":
                    assert int(np.abs(r - g).max()) <= 1 and np.mean(r != g) < 1e-3
                else:  # indexes may differ only where the scale sits on a threshold
                    differs = r != g
                    if differs.any():
                        near = _near_threshold(_reference_scales(model, stage, feeds))
                        assert np.all(near[differs]) and np.abs(r - g).max() <= 1, (stage, H, W)
                        near_threshold_mismatches += int(differs.sum())
            if stage == "hyper_synthesis":
                hyper = ref["hyper"]
    record_property("near_threshold_index_mismatches", near_threshold_mismatches)


def test_manifest_loads_back_and_hashes_match(exported: dict) -> None:
    config = CONFIGS[0]
    model, manifest, model_dir = exported[config]
    loaded = Manifest.load(model_dir)
    assert loaded == manifest
    assert set(loaded.graphs) == set(ALL_STAGES) and loaded.opset == 17
    assert (loaded.arch, loaded.N, loaded.M, loaded.anchor_parity) == (config[0], config[1], config[2], config[3])
    for stage, entry in loaded.graphs.items():
        assert file_sha256(model_dir / entry.file) == entry.sha256, stage
    _, y_tables, z_tables = build_package(model)
    assert EntropyTables.load(model_dir / loaded.y_tables).equals(y_tables)
    assert EntropyTables.load(model_dir / loaded.z_tables).equals(z_tables)
    assert z_tables.num_tables == config[1] and y_tables.num_tables == len(TABLE)
    np.testing.assert_array_equal(np.asarray(loaded.scale_table, np.float32), TABLE)
    assert not [p for p in model_dir.parent.iterdir() if p.name.endswith(".tmp")]  # no staging left


def test_graph_io_follows_the_contract(exported: dict) -> None:
    _, manifest, model_dir = exported[CONFIGS[0]]
    session = _session(manifest.graph_path(model_dir, "nonanchor_params"))
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("hyper", "tensor(float)", [1, 96, "h", "w"]),
        ("anchor_hat", "tensor(float)", [1, 48, "h", "w/2"]),
    ]
    with pytest.raises(ModelError, match="stage contract"):  # a graph checked against the wrong stage
        check_graph(manifest.graph_path(model_dir, "anchor_params"), "nonanchor_params", 32, 48)


def test_fingerprint_identifies_weights_config_and_table(exported: dict) -> None:
    model, manifest, _ = exported[CONFIGS[0]]
    first = model_fingerprint(model, TABLE)
    assert first == model_fingerprint(model, TABLE) == manifest.fingerprint
    package, backend = checkpoint_package(model)
    assert package.fingerprint == manifest.fingerprint and isinstance(backend, TorchBackend)
    assert model_fingerprint(model, TABLE * 1.001) != first
    other = tiny_model(*CONFIGS[0])
    assert model_fingerprint(other, TABLE) == first
    with torch.no_grad():
        other.h_s[0].weight.view(-1)[7] += 1e-3
    assert model_fingerprint(other, TABLE) != first
    odd = tiny_model(*CONFIGS[1])  # same weights, other anchor parity: other config
    assert model_fingerprint(odd, TABLE) != first


@pytest.mark.parametrize("arch", ["mbt2018", "mbt2018-mean"])
def test_non_checkerboard_architectures_are_refused(arch: str, tmp_path: Path) -> None:
    model = build_model(ModelConfig(arch=arch, N=16, M=24))
    with pytest.raises(ModelError, match="only checkerboard architectures"):
        export_model(model, tmp_path / "out")
    with pytest.raises(ModelError, match="only checkerboard"):
        build_package(model)
    with pytest.raises(ModelError):
        TorchBackend(model)
    assert not (tmp_path / "out").exists()


def test_torch_runner_reports_io_and_missing_inputs() -> None:
    package, backend = checkpoint_package(tiny_model(*CONFIGS[2]))
    runner = backend.load(package, "anchor_params")
    assert runner.inputs == STAGE_IO["anchor_params"][0] and runner.outputs == STAGE_IO["anchor_params"][1]
    with pytest.raises(ModelError, match="needs the input 'hyper'"):
        runner.run({})
    with pytest.raises(ModelError, match="unknown stage"):
        backend.load(package, "decoder")
    with pytest.raises(ModelError, match="no exported graphs"):  # an in-memory package has no files
        package.graph_path("anchor_params")


def test_torch_backend_refuses_a_package_of_other_weights(exported: dict) -> None:
    from ckbd.errors import ModelMismatchError
    from ckbd.runtime.package import ModelPackage

    _, _, model_dir = exported[CONFIGS[0]]
    other = tiny_model(*CONFIGS[0])
    with torch.no_grad():
        other.h_s[0].weight.view(-1)[0] += 1e-2
    with pytest.raises(ModelMismatchError, match="was not exported from"):
        TorchBackend(other).load(ModelPackage.open(model_dir), "anchor_params")


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv: list[str]) -> int:
    from ckbd.cli.main import run

    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    return int(exit_info.value.code or 0)


def test_cli_exports_a_saved_checkpoint(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, tiny_model("cheng2020-ckbd", 16, 16, "even"))
    out = tmp_path / "model"
    code = _cli(["export", str(checkpoint), "-o", str(out), "--stages", "anchor_params,latent_synthesis",
                 "--calibration-images", str(image_folder)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    manifest = Manifest.load(out)
    assert list(manifest.graphs) == ["anchor_params", "latent_synthesis"]
    assert manifest.entropy_params == "integer" and (out / "entropy_params.npz").is_file()
    float_out = tmp_path / "float"
    assert _cli(["export", str(checkpoint), "-o", str(float_out), "--entropy-params", "float"]) == 0
    assert Manifest.load(float_out).entropy_params == "float"
    assert _cli(["export", str(checkpoint), "-o", str(float_out), "--entropy-params", "fixed"]) == 2
    for entry in manifest.graphs.values():
        assert entry.file in printed and entry.sha256[:16] in printed


def test_cli_reports_missing_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import ckbd.runtime.package

    monkeypatch.setattr(ckbd.runtime.package, "default_checkpoint", lambda: tmp_path / "absent.pt")
    assert _cli(["export", "--default", "-o", str(tmp_path / "m")]) == 1
    assert "default checkpoint is not installed" in capsys.readouterr().err
    assert _cli(["export", "-o", str(tmp_path / "m")]) == 1
    assert _cli(["export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "m")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_export_rejects_unknown_stage(tmp_path: Path) -> None:
    with pytest.raises(CkbdError, match="unknown stage"):
        export_model(tiny_model(*CONFIGS[2]), tmp_path / "m", stages=("analysis", "decoder"))


def test_fp16_synthesis_variant_decodes_close_to_fp32(tmp_path: Path) -> None:
    from ckbd.runtime.codec import Decoder, Encoder

    out = tmp_path / "m"
    manifest = export_model(tiny_model("mbt2018-ckbd", 16, 24, "even"), out, fp16=True)
    entry = manifest.variants["fp16"]["latent_synthesis"]
    assert entry.precision == "fp16" and entry.sha256 == file_sha256(out / entry.file)
    import onnx

    graph = onnx.load(str(out / entry.file))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    image = (np.random.default_rng(0).random((70, 100, 3)) * 255).astype(np.uint8)
    data = Encoder.open(out, threads=1).encode(image)
    full = Decoder.open(out, threads=1).decode_detailed(data)
    half = Decoder.open(out, threads=1, precision="fp16").decode_detailed(data)
    np.testing.assert_array_equal(full.latents.nonanchor_hat, half.latents.nonanchor_hat)
    assert half.image.shape == full.image.shape
    assert np.abs(half.image.astype(int) - full.image.astype(int)).max() <= 8
